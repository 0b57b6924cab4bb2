#!/usr/bin/env bash
# Builds data/stories260K-prompts.jsonl: prompts of several knowledge types
# from templates (TinyStories names, objects, colours), each kept only when
# its target token is in the model's top-10 next tokens (checked with
# `resid tokenize` and `resid run`, as the paper filters its data).
#
#   scripts/make-dataset.sh [RESID] [MODEL] [OUT] [PER_TYPE]
#
# RESID defaults to build/resid, MODEL to $RESID_MODELS (or ../shared/models)
# /tinyllamas/stories260K.bin, OUT to data/stories260K-prompts.jsonl,
# PER_TYPE (kept prompts per type, at most) to 60. Deterministic: the
# candidates are shuffled with a fixed seed. See data/README.md.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
resid=${1:-$here/build/resid}
models=${RESID_MODELS:-$here/../shared/models}
model=${2:-$models/tinyllamas/stories260K.bin}
out=${3:-$here/data/stories260K-prompts.jsonl}
per_type=${4:-60}
[ -x "$resid" ] || { echo "make-dataset: $resid is not an executable (build first)" >&2; exit 1; }
[ -e "$model" ] || { echo "make-dataset: $model not found" >&2; exit 1; }

python3 - "$resid" "$model" "$out" "$per_type" <<'EOF'
import itertools, json, random, subprocess, sys

resid, model, out, per_type = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])

GIRLS = ["Lily", "Sue", "Anna", "Mia", "Lucy", "Sara", "Amy", "Kim", "Jane", "Sally", "Molly", "Zoe", "Emma"]
BOYS = ["Tim", "Timmy", "Sam", "Ben", "Max", "Tom", "Jack", "Bob", "Joe", "Mark", "Bill"]
OBJECTS = ["ball", "toy", "doll", "car", "kite", "box", "hat", "book", "cake", "flower", "boat", "apple", "cup", "bed"]
COLOURS = ["red", "blue", "green", "yellow", "pink", "white", "black", "brown"]

def people():
    for n in GIRLS:
        yield n, "girl", "she", "her"
    for n in BOYS:
        yield n, "boy", "he", "his"

def candidates():
    """(type, prompt, answer word): the target is the first token of the answer."""
    for (n, g, p, pos), (m, _, _, _) in itertools.permutations(list(people()), 2):
        yield "name", f"{n} and {m} were friends. {n} had a ball. {n} gave the ball to", m
        yield "name", f"Once upon a time, there was a little {g} named {n}. {p.capitalize()} had a friend named {m}. One day, {n} and", m
    for n, g, p, pos in people():
        yield "name", f"Once upon a time, there was a little {g} named {n}. Every day,", n
        yield "name", f"There was a {g} named {n}. {n} liked to play. One day,", n
        yield "pronoun", f"Once upon a time, there was a little {g} named {n}. One day,", p
        yield "pronoun", f"{n} was a little {g}. {n} was sad because", p
        yield "pronoun", f"There was a {g} named {n}. {n} had a toy. One day,", p
        for o in OBJECTS:
            yield "object", f"{n} had a {o}. {n} loved the {o} very much. One day, {n} lost {pos}", o
            yield "object", f"{n} found a {o} in the park. {n} picked up the", o
            yield "object", f"Once upon a time, {n} had a big {o}. {p.capitalize()} played with the", o
            for c in COLOURS:
                yield "colour", f"{n} had a {c} {o}. {n} liked the", c
                yield "colour", f"{n} saw a big {c} {o}. The {o} was", c
        for m, _, _, _ in people():
            if m != n:
                yield "common", f"{n} and {m} played all day. They had a lot of", "fun"
        yield "common", f"{n} said, \"Thank", "you"
        yield "common", f"{n} went to the park to", "play"
        yield "common", f"Once upon a time, there was a little {g} named {n}. {p.capitalize()} liked to", "play"
    yield "common", "Once upon a", "time"
    yield "common", "And they lived happily ever", "after"

def run_json(*args):
    r = subprocess.run([resid, *args], capture_output=True, text=True)
    if r.returncode != 0:
        raise RuntimeError(f"{' '.join(args)}: {r.stderr.strip()}")
    return json.loads(r.stdout)

def tokens(text):
    return [t["id"] for t in run_json("tokenize", model, "-p", text, "--json")["tokens"]]

def target_of(prompt, answer):
    """The first token of ' answer' after the prompt, as the model would emit it."""
    a, b = tokens(prompt), tokens(prompt + " " + answer)
    if b[:len(a)] != a or len(b) == len(a):
        return None
    return b[len(a)]

cands = list(candidates())
random.Random(260).shuffle(cands)
kept, seen, n_tried = {}, set(), 0
for typ, prompt, answer in cands:
    if len(kept.get(typ, [])) >= per_type or prompt in seen:
        continue
    seen.add(prompt)
    n_tried += 1
    tid = target_of(prompt, answer)
    if tid is None:
        continue
    top = run_json("run", model, "-p", prompt, "--top", "10", "--json")["top"]
    ids = [t["id"] for t in top]
    if tid not in ids:
        continue
    text = next(t["text"] for t in top if t["id"] == tid)
    kept.setdefault(typ, []).append({"prompt": prompt, "target": text, "type": typ, "answer": answer,
                                     "target_rank": ids.index(tid) + 1})

n = 0
with open(out, "w") as f:
    for typ in sorted(kept):
        for i, r in enumerate(kept[typ]):
            r = {"id": f"{typ}-{i:03d}", **r}
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
            n += 1
print(f"make-dataset: {n} prompts kept of {n_tried} tried: " +
      ", ".join(f"{t} {len(v)}" for t, v in sorted(kept.items())) + f" -> {out}", file=sys.stderr)
EOF
