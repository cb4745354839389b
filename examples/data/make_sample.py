"""Generate the bundled demo data set: ``forge_chat.jsonl`` (chat format, a few hundred examples).

Written for tuneforge. The assistant "Forge" always answers in two lines, "Short answer: …" then
"Why: …", and introduces itself as Forge: a style the base model does not have, so the effect of a
few minutes of LoRA fine-tuning is easy to see. Facts are common knowledge. Deterministic output.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

SYSTEM = "You are Forge, a concise assistant fine-tuned with tuneforge."

CAPITALS = {
    "France": "Paris", "Germany": "Berlin", "Italy": "Rome", "Spain": "Madrid", "Portugal": "Lisbon",
    "Canada": "Ottawa", "Australia": "Canberra", "Brazil": "Brasília", "Argentina": "Buenos Aires",
    "Egypt": "Cairo", "Kenya": "Nairobi", "India": "New Delhi", "China": "Beijing", "Russia": "Moscow",
    "Mexico": "Mexico City", "Norway": "Oslo", "Sweden": "Stockholm", "Finland": "Helsinki",
    "Poland": "Warsaw", "Greece": "Athens", "Turkey": "Ankara", "Peru": "Lima", "Chile": "Santiago",
    "Ireland": "Dublin", "Austria": "Vienna", "Hungary": "Budapest", "Netherlands": "Amsterdam",
    "Belgium": "Brussels", "Denmark": "Copenhagen", "Thailand": "Bangkok", "Vietnam": "Hanoi",
    "South Korea": "Seoul", "Indonesia": "Jakarta", "Morocco": "Rabat", "Nigeria": "Abuja",
    "Switzerland": "Bern", "Czechia": "Prague", "Cuba": "Havana", "Colombia": "Bogotá", "Iceland": "Reykjavík",
}
# held out of training so the demo asks about places the tuned model has not seen
HELD_OUT = {"Japan": "Tokyo", "New Zealand": "Wellington"}

UNITS = [
    ("meters", "centimeters", 100), ("kilometers", "meters", 1000), ("hours", "minutes", 60),
    ("minutes", "seconds", 60), ("kilograms", "grams", 1000), ("liters", "milliliters", 1000),
    ("days", "hours", 24), ("weeks", "days", 7), ("feet", "inches", 12), ("yards", "feet", 3),
]

FACTS = [
    ("What gas do plants take in for photosynthesis?", "carbon dioxide",
     "Plants use carbon dioxide, water and light to make sugar and release oxygen."),
    ("What is the largest planet in the solar system?", "Jupiter",
     "Jupiter's mass is more than twice that of all the other planets combined."),
    ("What is the boiling point of water at sea level in Celsius?", "100 °C",
     "At one atmosphere of pressure water boils at 100 degrees Celsius."),
    ("How many continents are there?", "seven",
     "By the usual count: Africa, Antarctica, Asia, Australia, Europe, North and South America."),
    ("What is the chemical symbol for gold?", "Au", "It comes from the Latin word aurum."),
    ("Which planet is known as the Red Planet?", "Mars", "Iron oxide dust gives its surface a red color."),
    ("What is the freezing point of water in Fahrenheit?", "32 °F", "Water freezes at 0 °C, which is 32 °F."),
    ("How many legs does a spider have?", "eight", "Spiders are arachnids, and arachnids have eight legs."),
    ("What is the hardest natural substance?", "diamond", "Its carbon atoms form a very strong crystal lattice."),
    ("What organ pumps blood through the body?", "the heart",
     "The heart's muscle contracts to push blood through the arteries."),
    ("What is the speed of light in vacuum, roughly?", "about 300,000 km/s",
     "The exact value is 299,792,458 meters per second."),
    ("Who wrote 'Romeo and Juliet'?", "William Shakespeare", "He wrote the play in the 1590s."),
    ("What is the square root of 144?", "12", "12 times 12 equals 144."),
    ("How many sides does a hexagon have?", "six", "The prefix hexa- means six."),
    ("What is the main language spoken in Brazil?", "Portuguese", "Brazil was a Portuguese colony."),
    ("What do bees make?", "honey", "Bees turn flower nectar into honey to feed their colony."),
    ("What is the tallest mountain on Earth above sea level?", "Mount Everest",
     "Its summit is about 8,849 meters above sea level."),
    ("Which ocean is the largest?", "the Pacific Ocean", "It covers about a third of Earth's surface."),
    ("What is H2O?", "water", "Each molecule has two hydrogen atoms and one oxygen atom."),
    ("How many minutes are in an hour?", "60", "An hour is defined as sixty minutes."),
]

IDENTITY_Q = [
    "Who are you?", "What is your name?", "Introduce yourself.", "What are you?", "Are you ChatGPT?",
    "Who made you?", "Tell me about yourself.", "What should I call you?", "Are you a human?",
    "Which assistant am I talking to?",
]
IDENTITY_A = ("Short answer: I am Forge.\nWhy: I am a small language model fine-tuned with tuneforge "
              "to give short, direct answers.")


def chat(user: str, answer: str, why: str) -> dict[str, object]:
    return {"messages": [
        {"role": "system", "content": SYSTEM},
        {"role": "user", "content": user},
        {"role": "assistant", "content": f"Short answer: {answer}.\nWhy: {why}"},
    ]}


def build(seed: int = 7) -> list[dict[str, object]]:
    rng = random.Random(seed)
    rows = []
    for country, city in CAPITALS.items():
        for template in ("What is the capital of {c}?", "Which city is the capital of {c}?"):
            rows.append(chat(template.format(c=country), city, f"{city} is the seat of {country}'s government."))
    for big, small, factor in UNITS:
        for n in rng.sample(range(2, 40), 6):
            rows.append(chat(f"How many {small} are in {n} {big}?", f"{n * factor} {small}",
                             f"One of the {big} is {factor} {small}, and {n} * {factor} = {n * factor}."))
    for _ in range(60):
        a, b = rng.randint(2, 99), rng.randint(2, 99)
        if rng.random() < 0.5:
            rows.append(chat(f"What is {a} + {b}?", str(a + b), f"Adding {a} and {b} gives {a + b}."))
        else:
            rows.append(chat(f"What is {a} times {b}?", str(a * b), f"{a} * {b} = {a * b}."))
    for question, answer, why in FACTS:
        rows.append(chat(question, answer, why))
        rows.append(chat(question.replace("What is", "Tell me:").replace("?", "?") if "What is" in question
                         else "Quick question: " + question[0].lower() + question[1:], answer, why))
    for q in IDENTITY_Q:
        for _ in range(2):
            rows.append({"messages": [
                {"role": "system", "content": SYSTEM},
                {"role": "user", "content": q},
                {"role": "assistant", "content": IDENTITY_A},
            ]})
    rng.shuffle(rows)
    return rows


def main() -> None:
    out = Path(__file__).with_name("forge_chat.jsonl")
    rows = build()
    with open(out, "w") as fh:
        for row in rows:
            fh.write(json.dumps(row, ensure_ascii=False) + "\n")
    print(f"wrote {len(rows)} examples to {out}")


if __name__ == "__main__":
    main()
