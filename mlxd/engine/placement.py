"""Where a new job's choices start (generation thread only).

Its KV cache comes from the longest prefix in the prompt cache (finished sequences, running.py)
or from a running sequence whose prompt begins the same way (prefix.py): one that has finished
its prompt hands a copy now, one still prefilling makes the job a follower until its first
token. The job then runs alone on the solo path (solo.py) while nothing else runs and it wants
one choice, or joins the batch, its other choices following the first.
"""

from __future__ import annotations

from collections.abc import Callable

from mlx_lm.models.cache import trim_prompt_cache

from mlxd.engine import vision
from mlxd.engine.job import EngineStats, Job
from mlxd.engine.prefix import cut_for, find_source
from mlxd.engine.running import PROMPT_CACHE_KEY, Running
from mlxd.engine.sampling import make_processors, make_sampler
from mlxd.engine.settings import EngineSettings
from mlxd.engine.solo import SOLO_UID, SoloRun


class Placement:
    """``settings`` and ``model`` are read at each placement: calibration may swap the model's
    copy and grow the KV budget; ``vlm`` (a VLM's mlx-vlm model) embeds a vision job's images."""

    def __init__(
        self,
        running: Running,
        tokenizer,
        stats: EngineStats,
        settings: Callable[[], EngineSettings],
        model: Callable[[], object],
        vlm,
    ) -> None:
        self._running = running
        self._tokenizer = tokenizer
        self._stats = stats
        self._settings = settings
        self._model = model
        self._vlm = vlm

    def place(self, job: Job, need: int, others_waiting: bool) -> None:
        """Start ``job`` (its KV bytes ``need`` per choice already admitted); ``others_waiting``:
        more jobs wait to start, so it will not be alone."""
        running = self._running
        cache, cached, hit = self._cached_prefix(job)
        source = self._shared_source(job, cached)
        if source is not None and not source.ready:  # follow it: start with its first token
            running.followers.add(source.uid, job, need)
            return
        if source is not None:
            ((leader, tokens),) = running.gen.extract_cache([source.uid]).values()
            cache, cached = cut_for(leader, list(tokens), job.prompt)
            hit = cached
            self._stats.shared_starts += 1
        rest = job.prompt[cached:]
        alone = not running.seqs and not others_waiting
        if self._settings().solo and job.params.n == 1 and alone:
            self._start_solo(job, rest, cache, job.prompt[:cached], need)
            running.seqs[SOLO_UID].cached_tokens = hit
            return
        uid = running.insert_choice(job, 0, rest, cache, job.prompt[:cached], need)
        running.seqs[uid].cached_tokens = hit
        if job.params.n > 1:
            running.followers.add(uid, job, need, first=1)

    def _shared_source(self, job: Job, cached: int):
        """A running sequence whose prompt begins like ``job``'s (prefix.py); text only: an
        image's placeholder tokens are alike whatever the image."""
        if job.vision is not None:
            return None
        running = {
            uid: (seq.job.prompt, self._running.pacer.decoding(uid))
            for uid, seq in self._running.seqs.items()
            if uid != SOLO_UID and seq.job.vision is None
        }
        return find_source(job.prompt, cached, running)

    def _cached_prefix(self, job: Job) -> tuple[list | None, int, int]:
        """(KV cache, prompt tokens it holds, of which the prompt cache gave): the longest cached
        prefix, then, for a vision job, its images prefilled after it (engine/vision.py)."""
        key = vision.cache_key(job.prompt, job.vision)
        prompt_cache = self._running.prompt_cache
        cache, rest = prompt_cache.fetch_nearest_cache(PROMPT_CACHE_KEY, key)
        if cache is not None and not rest:  # all cached: recompute the last token for logits
            trim_prompt_cache(cache, 1)
            rest = key[-1:]
        hit = cached = len(job.prompt) - len(rest)
        if job.vision is not None and vision.needs_prefill(job.prompt, job.vision, cached):
            step = self._settings().prefill_step_size
            cache = vision.prefill(
                self._vlm, self._model(), job.prompt, job.vision, cache, cached, step
            )
            cached = len(job.prompt) - 1
        return cache, cached, hit

    def _start_solo(self, job: Job, rest, cache, cached_tokens, need: int) -> None:
        p, running = job.params, self._running
        running.solo = SoloRun(
            self._model(),
            list(rest),
            cache if cache is not None else running.new_cache(),
            list(cached_tokens),
            make_sampler(p),
            make_processors(p, len(job.prompt)),
            p.max_tokens,
            self._settings().prefill_step_size,
            set(self._tokenizer.eos_token_ids),
        )
        running.track(SOLO_UID, job, 0, need, cached_tokens=len(cached_tokens))
        self._stats.prompt_tokens += len(rest)
        self._stats.reused_tokens += len(cached_tokens)
