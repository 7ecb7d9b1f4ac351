"""fleet: the front end of --models (several models, one worker process each)"""
