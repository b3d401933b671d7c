"""Write `router_sample.csv`: a small, made-up routing dataset for tests and demos.

We need labelled "which model was right" data without running models or fetching a
benchmark, so this script invents it: easy prompts (greetings, short facts) that the
`small` model usually gets right, and hard prompts (multi-step arithmetic, proofs, long
reasoning) that only `large` usually gets right. Correctness is drawn with a fixed seed
and some noise, so routers have something real but imperfect to learn. The `group`
column says which kind a row is; routers never see it, tests use it to check separation.

Run `python tests/data/make_router_sample.py` to regenerate; the output is deterministic.
"""

from __future__ import annotations

import csv
import random
from pathlib import Path

SEED = 7
ROWS_PER_GROUP = 60
# P(correct) for (small, large) per group: easy prompts rarely need the large model.
P_CORRECT = {"easy": (0.9, 0.95), "hard": (0.15, 0.8)}

COUNTRIES = ["France", "Japan", "Kenya", "Peru", "Canada", "Italy", "Egypt", "Norway"]
ANIMALS = ["cat", "dog", "horse", "bird", "fish", "cow"]
LANGUAGES = ["French", "Spanish", "German", "Italian"]
NAMES = ["Ana", "Ben", "Chen", "Dara", "Eli", "Fay"]
FRUITS = ["banana", "lemon", "cherry", "plum", "lime"]
TOPICS = [
    "inflation",
    "photosynthesis",
    "plate tectonics",
    "vaccination",
    "tides",
    "rainbows",
    "the seasons",
    "rust on iron",
    "unemployment",
    "bird migration",
    "volcanic eruptions",
    "antibiotic resistance",
]

EASY = [
    "Hi there, I am {name}!",
    "Good morning {name}, how are you?",
    "Hello {name}! Nice to meet you.",
    "Thanks {name}, have a great day!",
    "What is the capital of {country}?",
    "Which continent is {country} in?",
    "How do you say {animal} in {language}?",
    "What sound does a {animal} make?",
    "How many legs does a {animal} have?",
    "What colour is a ripe {fruit}?",
    "Say hello to {name}.",
    "Is a {animal} a mammal?",
]
HARD = [
    "A train leaves at {h}:00 going {a} km/h; a second leaves {b} hours later at {c} km/h. "
    "Step by step, when does the second catch up, and how far from the station?",
    "Prove that the square root of {p} is irrational.",
    "Prove by induction that the sum of the first n odd numbers is n squared, "
    "then derive a closed form for the sum of the first {a} cubes.",
    "{name} buys {a} apples at {b} cents each and {c} pears at twice that price, pays with "
    "a {d} dollar note and splits the change with {name2}. Work out each share step by step.",
    "Explain in detail why {topic} happens, compare two competing explanations, and "
    "evaluate the evidence for each.",
    "Solve the system {a}x + {b}y = {c} and {b}x - {a}y = {d}, showing every step, "
    "then verify the solution.",
    "Derive the volume of a cone of height {a} and radius {b} from first principles "
    "using integration and justify each step of the argument.",
    "Write a careful essay analysing the trade-offs of {topic} policy, with a structured "
    "argument, counterarguments and a conclusion.",
]


def fill(template: str, rng: random.Random) -> str:
    return template.format(
        country=rng.choice(COUNTRIES),
        animal=rng.choice(ANIMALS),
        language=rng.choice(LANGUAGES),
        name=rng.choice(NAMES),
        name2=rng.choice(NAMES),
        topic=rng.choice(TOPICS),
        fruit=rng.choice(FRUITS),
        h=rng.randint(6, 11),
        a=rng.randint(2, 90),
        b=rng.randint(2, 9),
        c=rng.randint(3, 120),
        d=rng.choice([5, 10, 20, 50]),
        p=rng.choice([2, 3, 5, 7, 11, 13, 17, 19, 23, 29, 31, 37]),
    )


def make_rows(rng: random.Random) -> list[dict[str, str]]:
    rows = []
    seen: set[str] = set()
    for group, templates in (("easy", EASY), ("hard", HARD)):
        p_small, p_large = P_CORRECT[group]
        for i in range(ROWS_PER_GROUP):
            # Unique prompts, so a train/test split never leaks a prompt into both halves.
            for _ in range(100):
                prompt = fill(templates[i % len(templates)], rng)
                if prompt not in seen:
                    break
            else:
                raise RuntimeError(
                    f"template has too few variants: {templates[i % len(templates)]}"
                )
            seen.add(prompt)
            rows.append(
                {
                    "prompt": prompt,
                    "small": str(int(rng.random() < p_small)),
                    "large": str(int(rng.random() < p_large)),
                    "group": group,
                }
            )
    rng.shuffle(rows)
    return rows


def main() -> None:
    path = Path(__file__).with_name("router_sample.csv")
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["prompt", "small", "large", "group"])
        writer.writeheader()
        writer.writerows(make_rows(random.Random(SEED)))
    print(f"wrote {path.name}")


if __name__ == "__main__":
    main()
