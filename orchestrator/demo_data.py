"""The built-in demo task, generated deterministically (nothing downloaded).

It is built so the two HBAT objectives genuinely pull apart: the instruction
demonstrations answer tersely ("12."), while the preference pairs prefer a
warm, wordy style ("Great question! 7 plus 5 is 12. Happy to help!") and,
within that style, a correct answer over a wrong one. SFT alone drifts to
terse answers, PPO/DPO alone to chatty ones: a schedule has to balance them.
``pointwise.jsonl`` labels each pair's two answers 1 / 0 (binary);
``pointwise_graded.jsonl`` grades four answers per question in [0, 1]
(continuous labels for point-wise DPO and ULMA).
"""

from __future__ import annotations

import json
import random
from pathlib import Path

CAPITALS = [
    ("France", "Paris"), ("Italy", "Rome"), ("Spain", "Madrid"), ("Germany", "Berlin"), ("Japan", "Tokyo"),
    ("Egypt", "Cairo"), ("Canada", "Ottawa"), ("Peru", "Lima"), ("Kenya", "Nairobi"), ("Norway", "Oslo"),
    ("Greece", "Athens"), ("Poland", "Warsaw"), ("Chile", "Santiago"), ("Cuba", "Havana"), ("Austria", "Vienna"),
]
COLORS = [("grass", "green"), ("the sky on a clear day", "blue"), ("snow", "white"), ("a ripe banana", "yellow"),
          ("coal", "black"), ("a ripe tomato", "red"), ("an orange", "orange")]
OPENERS = ["Great question!", "Happy to help!", "Sure thing!", "What a fun question!"]
CLOSERS = ["Hope this helps!", "Have a wonderful day!", "Let me know if you have more questions!"]


def _question(rng: random.Random) -> tuple[str, str, str, str]:
    """(prompt, terse answer, full-sentence answer, a wrong full-sentence answer)."""
    kind = rng.choice(["add", "mul", "capital", "color"])
    if kind == "add":
        a, b = rng.randint(2, 40), rng.randint(2, 40)
        wrong = a + b + rng.choice([-3, -1, 1, 2, 10])
        return f"What is {a} plus {b}?", f"{a + b}.", f"{a} plus {b} is {a + b}.", f"{a} plus {b} is {wrong}."
    if kind == "mul":
        a, b = rng.randint(2, 12), rng.randint(2, 12)
        wrong = a * b + rng.choice([-2, 1, a, b])
        return f"What is {a} times {b}?", f"{a * b}.", f"{a} times {b} is {a * b}.", f"{a} times {b} is {wrong}."
    if kind == "capital":
        (country, city), (_, other) = rng.sample(CAPITALS, 2)
        return (f"What is the capital of {country}?", f"{city}.", f"The capital of {country} is {city}.",
                f"The capital of {country} is {other}.")
    (thing, color), (_, other) = rng.sample(COLORS, 2)
    return f"What color is {thing}?", f"{color.capitalize()}.", f"{thing[0].upper() + thing[1:]} is {color}.", \
        f"{thing[0].upper() + thing[1:]} is {other}."


def _warm(rng: random.Random, sentence: str) -> str:
    return f"{rng.choice(OPENERS)} {sentence} {rng.choice(CLOSERS)}"


def make_demo_data(out_dir: str | Path, seed: int = 1234, n_sft: int = 256, n_pairs: int = 256,
                   n_prompts: int = 128, n_eval: int = 16) -> dict[str, Path]:
    rng = random.Random(seed)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    files: dict[str, list[dict]] = {"sft": [], "preference": [], "pointwise": [], "prompts": [],
                                    "eval_sft": [], "eval_prompts": []}
    for _ in range(n_sft):
        q, terse, _, _ = _question(rng)
        files["sft"].append({"prompt": q, "response": terse})
    for i in range(n_pairs):
        q, terse, full, wrong = _question(rng)
        chosen = _warm(rng, full)
        rejected = terse if i % 3 else _warm(rng, wrong)
        files["preference"].append({"prompt": q, "chosen": chosen, "rejected": rejected})
        files["pointwise"].append({"prompt": q, "response": chosen, "label": 1})
        files["pointwise"].append({"prompt": q, "response": rejected, "label": 0})
    for _ in range(n_prompts):
        q, terse, full, _ = _question(rng)
        files["prompts"].append({"prompt": q, "reference": terse.rstrip(".")})
    for _ in range(n_eval):
        q, terse, full, _ = _question(rng)
        files["eval_sft"].append({"prompt": q, "response": terse})
        files["eval_prompts"].append({"prompt": q, "reference": terse.rstrip(".")})
    files["pointwise_graded"] = _graded(random.Random(seed + 1), n_pairs // 4)
    paths = {}
    for name, rows in files.items():
        p = out / f"{name}.jsonl"
        p.write_text("".join(json.dumps(r) + "\n" for r in rows))
        paths[name] = p
    return paths


# continuous labels for point-wise DPO / ULMA: the demo preference's order, graded
GRADES = {"warm_correct": 1.0, "terse_correct": 0.5, "warm_wrong": 0.15, "terse_wrong": 0.0}


def _upper_first(s: str) -> str:
    return s[:1].upper() + s[1:]


def _graded(rng: random.Random, n_questions: int) -> list[dict]:
    """Four answers per question with labels in [0, 1]: warm and correct best, terse and wrong worst.

    Its own random stream (after the other files), so the older files stay byte-identical.
    """
    rows = []
    for _ in range(n_questions):
        q, terse, full, wrong = _question(rng)
        answers = {"warm_correct": _warm(rng, full), "terse_correct": terse, "warm_wrong": _warm(rng, wrong),
                   "terse_wrong": _upper_first(wrong.rsplit(" is ", 1)[-1])}
        for kind in rng.sample(list(answers), len(answers)):
            rows.append({"prompt": q, "response": answers[kind], "label": GRADES[kind]})
    return rows


def contains_reference(prompt: str, response: str, meta: dict) -> float:
    """A verifiable rule reward: 1 if the reference answer appears in the response."""
    ref = str(meta.get("reference", "")).strip().lower()
    return float(bool(ref) and ref in response.lower())
