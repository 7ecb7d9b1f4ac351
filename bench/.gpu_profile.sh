set -u
mkdir -p $OUT
test -f /tmp/rand-8b/config.json || timeout 150 python3 bench/make_random_model.py --shape 8b --bits 4 --tokenizer-from .gpu/tok --out /tmp/rand-8b > $OUT/make.log 2>&1
timeout 300 python3 bench/served_profile.py --model /tmp/rand-8b --streams 64 --rounds 3 --top 60 --variants "full=;kv8=--kv-bits 8" --phases --out $OUT/phases.txt > $OUT/phases.out 2>&1
cat $OUT/phases.out | tail -8; grep -A9 "steps, " $OUT/phases.txt; grep evaluated $OUT/phases.txt
