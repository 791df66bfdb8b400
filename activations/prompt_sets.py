"""Prompt sets for a corpus the model writes itself (``data.corpus=generated:<set>``, activations/generation.py)
and for steering: problems with a checkable answer, drawn from templates with a seed (multi-step arithmetic,
comparisons, simple logic, word problems), and open questions asking for a step-by-step explanation.

    reasoning  the four problem kinds and open questions, in turn (one prompt in five is open)
    problems   the four problem kinds only (what steering scores: each has an answer to check)
    open       open questions only (frame x topic, each pair once before any repeats)
"""
import itertools
import random
import re
from dataclasses import dataclass

INSTRUCTION = "Think step by step, then give the final answer on the last line."
NAMES = ["Alice", "Ben", "Chloe", "David", "Emma", "Farid", "Grace", "Hugo", "Ines", "Jonas", "Kemal", "Lena",
         "Mateo", "Nora", "Omar", "Priya", "Quinn", "Rosa", "Sami", "Tara"]
ITEMS = ["apples", "marbles", "stickers", "books", "coins", "pencils", "cookies", "stamps"]
RELATIONS = [("taller", "tallest"), ("older", "oldest"), ("faster", "fastest"), ("heavier", "heaviest")]
FRAMES = ["Explain step by step why {}.", "Walk me through, step by step, why {}.",
          "Why is it that {}? Reason it out carefully.", "Think it through: why {}?",
          "Give a careful step-by-step explanation of why {}.", "Can you reason out why {}?",
          "What is the reasoning behind the fact that {}?", "Explain, considering alternatives, why {}."]
TOPICS = ["the sky is blue", "ice floats on water", "the seasons change", "a heavier object does not fall faster",
          "bread goes stale", "metal feels colder than wood", "the moon has phases", "boats float",
          "a sorted list can be searched faster", "prime numbers never run out", "leaves change colour in autumn",
          "the sum of two odd numbers is even", "hot air rises", "salt melts ice on roads",
          "a square's diagonal is longer than its side", "we see lightning before we hear thunder",
          "a recursive function needs a base case", "plants need sunlight", "a bicycle stays upright when moving",
          "compound interest grows faster than simple interest", "averages can hide outliers",
          "correlation does not imply causation", "water boils at a lower temperature on a mountain",
          "a hash table lookup is usually fast", "vaccines protect people", "a triangle's angles sum to 180 degrees",
          "some bugs only appear under load", "rainbows form after rain", "a shuffled deck is hard to predict",
          "dividing by zero is undefined", "deserts are cold at night", "a larger sample gives a better estimate",
          "the Earth has day and night", "a chain is only as strong as its weakest link",
          "a binary number needs more digits than its decimal form", "cats land on their feet",
          "the same medicine can help one person and harm another", "traffic jams can form without a cause",
          "an unbalanced tree slows down lookups", "a mirror swaps left and right but not up and down"]


@dataclass(frozen=True)
class Prompt:
    text: str
    kind: str  # arithmetic | comparison | logic | word_problem | open
    answer: str | None = None  # an integer, "yes" / "no", or a name; None for an open question


def arithmetic(rng: random.Random) -> Prompt:
    a, b, c, d = rng.randint(2, 60), rng.randint(2, 60), rng.randint(2, 9), rng.randint(1, 99)
    form = rng.randrange(3)
    if form == 0:
        return Prompt(f"Compute ({a} + {b}) * {c} - {d}. {INSTRUCTION}", "arithmetic", str((a + b) * c - d))
    if form == 1:
        return Prompt(f"What is {a} * {c} + {b} * {c} - {d}? {INSTRUCTION}", "arithmetic", str(a * c + b * c - d))
    return Prompt(f"Start from {a}, add {b}, multiply by {c}, then subtract {d}. What do you get? {INSTRUCTION}",
                  "arithmetic", str((a + b) * c - d))


def comparison(rng: random.Random) -> Prompt:
    a, b, c, d = rng.randint(3, 30), rng.randint(3, 30), rng.randint(10, 400), rng.randint(10, 400)
    if a * b == c + d:
        d += 1
    return Prompt(f"Is {a} * {b} larger than {c} + {d}? Answer yes or no. {INSTRUCTION}", "comparison",
                  "yes" if a * b > c + d else "no")


def logic(rng: random.Random) -> Prompt:
    """A chain of three comparisons stated out of order; the question asks for one end of it."""
    people = rng.sample(NAMES, 4)  # people[0] is the most, people[3] the least
    comparative, superlative = rng.choice(RELATIONS)
    facts = [f"{people[i]} is {comparative} than {people[i + 1]}." for i in range(3)]
    rng.shuffle(facts)
    return Prompt(f"{' '.join(facts)} Who is the {superlative}? {INSTRUCTION}", "logic", people[0])


def word_problem(rng: random.Random) -> Prompt:
    name, item = rng.choice(NAMES), rng.choice(ITEMS)
    a, b, c, d = rng.randint(5, 40), rng.randint(2, 6), rng.randint(3, 12), rng.randint(1, 20)
    if rng.randrange(2):
        return Prompt(f"{name} has {a} {item}. {name} buys {b} boxes with {c} {item} each, then gives away {d}. "
                      f"How many {item} does {name} have now? {INSTRUCTION}", "word_problem", str(a + b * c - d))
    total = b * c + d
    return Prompt(f"{name} shares {total} {item} equally among {b} friends and keeps the {d} left over. How many "
                  f"{item} does each friend get? {INSTRUCTION}", "word_problem", str(c))


def open_questions(rng: random.Random):
    """Every (frame, topic) pair once, in a seeded order, then again in another."""
    pairs = list(itertools.product(FRAMES, TOPICS))
    while True:
        rng.shuffle(pairs)
        for frame, topic in pairs:
            yield Prompt(frame.format(topic), "open")


PROBLEMS = (arithmetic, comparison, logic, word_problem)
SETS = {"reasoning": PROBLEMS + ("open",), "problems": PROBLEMS, "open": ("open",)}


def build(name: str, count: int, seed: int, exclude: set[str] = frozenset()) -> list[Prompt]:
    """``count`` prompts of set ``name``, the kinds in turn; no problem twice, none whose text is in
    ``exclude`` (a corpus's prompts, when steering needs held-out ones)."""
    if name not in SETS:
        raise ValueError(f"prompt set '{name}' is unknown: choose from {sorted(SETS)}")
    if count < 1:
        raise ValueError(f"a prompt set needs at least 1 prompt, got {count}")
    rng = random.Random(f"{name}:{seed}")
    opened = open_questions(random.Random(f"{name}:{seed}:open"))
    prompts, seen = [], set(exclude)
    for kind in itertools.cycle(SETS[name]):
        if len(prompts) == count:
            return prompts
        if kind == "open":
            prompts.append(next(opened))
            continue
        prompt = kind(rng)
        while prompt.text in seen:  # the template space holds millions of problems: this ends fast
            prompt = kind(rng)
        seen.add(prompt.text)
        prompts.append(prompt)


NUMBER = re.compile(r"-?\d[\d,]*")


def final_answer(response: str, prompt: Prompt) -> str | None:
    """The answer a response gives: its last number, its last yes/no, or the last of the problem's names it
    mentions (as the instruction asks for the answer at the end)."""
    if prompt.answer is None:
        return None
    if prompt.kind == "comparison":
        words = re.findall(r"\b(yes|no)\b", response.lower())
        return words[-1] if words else None
    if prompt.kind == "logic":
        names = [name for name in NAMES if name in prompt.text]
        found = [(match.start(), name) for name in names for match in re.finditer(rf"\b{name}\b", response)]
        return max(found)[1] if found else None
    numbers = NUMBER.findall(response)
    return numbers[-1].replace(",", "") if numbers else None


def is_correct(response: str, prompt: Prompt) -> bool:
    return final_answer(response, prompt) == prompt.answer
