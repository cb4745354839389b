"""Writes ``pii_labelled.jsonl``: the labelled set the PII scanner is measured on (``python make_labelled.py``).

Each line: ``{"text": ..., "spans": [{"kind", "start", "end"}], "note": ...}``. Labels come from construction
(the generator knows where it put each value), never from the scanner. Values are synthetic: checksummed
numbers are made valid by this file's own Luhn / mod-97 code; names, domains and keys are random. Three groups:

- ``positive``: one or two values of a kind in a sentence, in the formats people write;
- ``hard_negative``: look-alikes that are not personal data (versions, dates, order ids, numbers failing Luhn,
  IBANs failing mod 97, UUIDs, hashes, MAC addresses, never-issued SSNs, public keys, times, coordinates);
- ``hard_positive``: real values written in ways the scanner is not built to find (digits without separators,
  obfuscated addresses), so that recall is measured honestly and is below 1 where it should be.

The output is committed; rerun after changing the generator (it is seeded, so the output is deterministic).
"""

from __future__ import annotations

import json
import random
import string
from pathlib import Path
from typing import Any

OUT = Path(__file__).with_name("pii_labelled.jsonl")
rng = random.Random(20261201)

FIRST = ["anna", "bob", "chen", "dmitri", "elena", "farah", "george", "hiro", "ines", "jamal", "kofi", "lena",
         "mateo", "nadia", "oscar", "priya", "quinn", "rosa", "sven", "tariq", "uma", "victor", "wei", "ximena"]
LAST = ["smith", "garcia", "muller", "rossi", "tanaka", "okafor", "novak", "silva", "kowalski", "larsen", "nguyen"]
DOMAINS = ["example.com", "mail.example.org", "corp.example.net", "uni-example.ac.uk", "example.de", "example.io",
           "sub.mail.example.co.jp"]
TEMPLATES = [
    "Please reach me at {v} if anything changes.",
    "My details: {v}. Thanks!",
    "Customer wrote: \"you can use {v} for the refund\"",
    "{v} is the one on file.",
    "Update the record to {v} before Friday",
    "Notes from the call -- contact: {v}; follow up next week.",
    "I already sent it ({v}), did you get it?",
    "value={v}",
]


def luhn_complete(prefix_digits: str, length: int) -> str:
    body = prefix_digits + "".join(rng.choice(string.digits) for _ in range(length - len(prefix_digits) - 1))
    for check in string.digits:
        number = body + check
        total = 0
        for i, ch in enumerate(reversed(number)):
            d = int(ch) * (2 if i % 2 else 1)
            total += d - 9 if d > 9 else d
        if total % 10 == 0:
            return number
    raise AssertionError


def luhn_break(number: str) -> str:
    last = int(number[-1])
    return number[:-1] + str((last + rng.randint(1, 9)) % 10)


def group(number: str, sizes: list[int], sep: str) -> str:
    out, at = [], 0
    for size in sizes:
        out.append(number[at:at + size])
        at += size
    return sep.join(p for p in out if p)


def email() -> str:
    name = rng.choice(FIRST) + rng.choice([".", "_", "", "+news."]) + rng.choice(LAST)
    if rng.random() < 0.3:
        name += str(rng.randint(1, 99))
    if rng.random() < 0.15:
        name = name.capitalize()
    return f"{name}@{rng.choice(DOMAINS)}"


def phone() -> str:
    kind = rng.randrange(7)
    npa, nxx, last4 = rng.randint(201, 989), rng.randint(200, 999), rng.randint(0, 9999)
    if kind == 0:
        return f"({npa}) {nxx}-{last4:04d}"
    if kind == 1:
        return f"{npa}-{nxx}-{last4:04d}"
    if kind == 2:
        return f"{npa}.{nxx}.{last4:04d}"
    if kind == 3:
        return f"+1 {npa} {nxx} {last4:04d}"
    if kind == 4:
        return f"+44 20 {rng.randint(7000, 8999)} {rng.randint(0, 9999):04d}"
    if kind == 5:
        return f"07{rng.randint(100, 999)} {rng.randint(100000, 999999)}"
    return rng.choice([f"+33 1 {rng.randint(10, 99)} {rng.randint(10, 99)} {rng.randint(10, 99)} {rng.randint(10, 99)}",
                       f"+49 30 {rng.randint(1000000, 9999999)}", f"+91 {rng.randint(70000, 99999)} "
                       f"{rng.randint(10000, 99999)}"])


CARD_KINDS = [("4", 16, [4, 4, 4, 4]), ("51", 16, [4, 4, 4, 4]), ("55", 16, [4, 4, 4, 4]),
              ("2221", 16, [4, 4, 4, 4]), ("34", 15, [4, 6, 5]), ("37", 15, [4, 6, 5]), ("6011", 16, [4, 4, 4, 4])]


def card(valid: bool = True) -> str:
    prefix, length, sizes = rng.choice(CARD_KINDS)
    number = luhn_complete(prefix, length)
    if not valid:
        number = luhn_break(number)
    return group(number, sizes, rng.choice([" ", "-", ""]))


IBAN_FORMATS = {"DE": (22, "n"), "FR": (27, "n"), "NL": (18, "NL"), "GB": (22, "GB"), "ES": (24, "n"),
                "IT": (27, "IT"), "BE": (16, "n"), "CH": (21, "n"), "PL": (28, "n"), "AT": (20, "n")}


def _mod97(compact: str) -> int:
    rearranged = compact[4:] + compact[:4]
    return int("".join(str(int(c, 36)) for c in rearranged)) % 97


def iban(valid: bool = True) -> str:
    country = rng.choice(list(IBAN_FORMATS))
    length, shape = IBAN_FORMATS[country]
    if shape in ("GB", "NL"):
        bank = "".join(rng.choice(string.ascii_uppercase) for _ in range(4))
        bban = bank + "".join(rng.choice(string.digits) for _ in range(length - 8))
    elif shape == "IT":
        bban = rng.choice(string.ascii_uppercase) + "".join(rng.choice(string.digits) for _ in range(length - 5))
    else:
        bban = "".join(rng.choice(string.digits) for _ in range(length - 4))
    check = 98 - _mod97(country + "00" + bban)
    compact = f"{country}{check:02d}{bban}"
    if not valid:
        compact = f"{country}{(check + rng.randint(1, 50)) % 100:02d}{bban}"
        if _mod97(compact) == 1:
            compact = compact[:-1] + str((int(compact[-1]) + 1) % 10)
    if rng.random() < 0.5:
        return " ".join(compact[i:i + 4] for i in range(0, len(compact), 4))
    return compact


def ssn() -> str:
    area = rng.choice([n for n in range(1, 900) if n != 666])
    return f"{area:03d}-{rng.randint(1, 99):02d}-{rng.randint(1, 9999):04d}"


NINO_FIRST = "ABCEGHJKLMNPRSTWXYZ"
NINO_SECOND = "ABCEGHJKLMNPRSTWXYZ"


def nino() -> str:
    while True:
        prefix = rng.choice(NINO_FIRST) + rng.choice(NINO_SECOND)
        if prefix not in ("BG", "GB", "NK", "KN", "TN", "NT", "ZZ"):
            break
    digits = f"{rng.randint(0, 999999):06d}"
    suffix = rng.choice("ABCD")
    if rng.random() < 0.5:
        return f"{prefix} {digits[:2]} {digits[2:4]} {digits[4:]} {suffix}"
    return f"{prefix}{digits}{suffix}"


def ipv4() -> str:
    first = rng.choice([10, 172, 192, 203, 81, 51, 198, 8, 100])
    return f"{first}.{rng.randint(0, 255)}.{rng.randint(0, 255)}.{rng.randint(1, 254)}"


def ipv6() -> str:
    groups = [f"{rng.randint(0, 0xFFFF):x}" for _ in range(8)]
    groups[0] = rng.choice(["2001", "2a00", "2607", "fd12"])
    if rng.random() < 0.5:
        return ":".join(groups)
    return ":".join(groups[:3]) + "::" + ":".join(groups[6:])


def _rand(chars: str, n: int) -> str:
    return "".join(rng.choice(chars) for _ in range(n))


ALNUM = string.ascii_letters + string.digits


def secret() -> str:
    kind = rng.randrange(8)
    if kind == 0:
        return "sk-proj-" + _rand(ALNUM + "_-", 48)
    if kind == 1:
        return "sk-" + _rand(ALNUM, 48)
    if kind == 2:
        return "AKIA" + _rand(string.ascii_uppercase + "234567", 16)
    if kind == 3:
        return "ghp_" + _rand(ALNUM, 36)
    if kind == 4:
        return "xoxb-" + f"{rng.randint(10**10, 10**11)}-{rng.randint(10**10, 10**11)}-" + _rand(ALNUM, 24)
    if kind == 5:
        return "AIza" + _rand(ALNUM + "_-", 35)
    if kind == 6:
        return "sk_live_" + _rand(ALNUM, 24)
    body = "\n".join(_rand(ALNUM + "+/", 64) for _ in range(3))
    label = rng.choice(["RSA ", "EC ", "OPENSSH ", ""])
    return f"-----BEGIN {label}PRIVATE KEY-----\n{body}\n-----END PRIVATE KEY-----"


def labelled(template: str, values: list[tuple[str, str]], note: str) -> dict[str, object]:
    """``template`` with ``{v}`` (and ``{w}``) replaced; the spans are where the values landed."""
    text = template
    spans: list[dict[str, Any]] = []
    for placeholder, (kind, value) in zip(("{v}", "{w}"), values, strict=False):
        at = text.index(placeholder)
        text = text[:at] + value + text[at + len(placeholder):]
        spans.append({"kind": kind, "start": at, "end": at + len(value)})
    spans.sort(key=lambda s: int(s["start"]))
    return {"text": text, "spans": spans, "note": note}


MAKERS = {"email": email, "phone": phone, "credit_card": card, "iban": iban, "us_ssn": ssn, "uk_nino": nino,
          "ipv4": ipv4, "ipv6": ipv6, "secret": secret}
PAIRS = ["Two of them: {v} and {w}.", "old {v} -> new {w}", "{v}, also {w}"]


def positives() -> list[dict[str, object]]:
    rows = []
    for kind, make in MAKERS.items():
        for _ in range(22):
            rows.append(labelled(rng.choice(TEMPLATES), [(kind, make())], "positive"))
    kinds = list(MAKERS)
    for _ in range(25):
        a, b = rng.sample(kinds, 2)
        rows.append(labelled(rng.choice(PAIRS), [(a, MAKERS[a]()), (b, MAKERS[b]())], "positive"))
    return rows


def _uuid() -> str:
    h = _rand("0123456789abcdef", 32)
    return f"{h[:8]}-{h[8:12]}-4{h[13:16]}-a{h[17:20]}-{h[20:]}"


def negatives() -> list[str]:
    fixed = [
        "Upgrade to version 1.2.3 before the release.", "pip install tuneforge==2.10.4", "Chrome 120.0.6099.109",
        "Meeting on 2024-01-15 at 12:30:45 UTC", "Invoice date 15/01/2024, due 2024-02-14", "Order ORD-2024-558812",
        "Ticket INV-00012345 was closed", "ISBN 978-3-16-148410-0", "zip 90210-1234", "MAC 00:1A:2B:3C:4D:5E",
        "std::vector<int> v; a::b::c", "listen on ::1 and 0.0.0.0", "localhost is 127.0.0.1",
        "netmask 255.255.255.0", "Pi is 3.14159265, e is 2.71828", "Revenue 1,234,567.89 USD",
        "Coordinates 37.7749, -122.4194", "Score +5 points, then -3", "ssh-rsa AAAAB3NzaC1yc2EAAAADAQABAAABAQC7 user",
        "-----BEGIN PUBLIC KEY-----", "-----BEGIN CERTIFICATE-----", "Use scikit-learn (sk-learn-is-a-nickname).",
        "The key id AKIA is a prefix only", "ghp_short is not a token", "mention @username on the forum",
        "write to name@localhost on the box", "npm i lodash@4.17.21", "SSN 000-12-3456 is never issued",
        "666-12-3456 is not an SSN", "123-00-4567 has group 00", "987-65-4321 is in the 9xx range",
        "Call 123-456-7890 (area codes never start with 1)", "Time 10:45 to 11:15",
        "Phone extension x4521", "Batch 2023-11-30-0457", "Build 20231130.4",
        "release 10.0.19045.2965", "port 8080, pid 31337", "Array index [1][2][3]", "Model gpt-4o-2024-08-06",
        "File report_2024_01_15.csv", "commit 3e89ec1 and 90b85fe", "Temperature 36.6 C", "tracking 1Z999AA10123456784",
        "Room 4.012, floor 3", "Page 1-800 of the manual", "Hash sha256:9f86d081884c7d659a2feaa0c55ad015",
        "Lat/long 51.5074 N, 0.1278 W", "GB00 WEST 1234 5698 7654 32 (example with a bad check)",
        "Serial SN-4111-1111-1111", "The year 1999 and 2024", "Flight BA 0287 at 14:05",
        "Fraction 1/2 and 3/4", "HTTP 404 / 500 errors", "Totals: 10 20 30 40 50 60", "id=00000000000000000000",
        "ratio 16:9 and 4:3", "vector [0.12, -0.5, 3.3e-05]", "Docker image sha 4f2d9a1c",
        "driver version 4.2.0.1 installed", "pin foo==1.0.0.12 in requirements", "firmware v10.1.2.3",
    ]
    generated = []
    for _ in range(25):
        generated.append(f"Card on the form: {card(valid=False)} (rejected)")
    for _ in range(20):
        generated.append(f"Bank account {iban(valid=False)} failed validation")
    for _ in range(20):
        generated.append(f"request id {_uuid()}")
    for _ in range(15):
        generated.append(f"md5 {_rand('0123456789abcdef', 32)} sha1 {_rand('0123456789abcdef', 40)}")
    for _ in range(15):
        generated.append(f"v{rng.randint(0, 9)}.{rng.randint(0, 30)}.{rng.randint(0, 99)} released on "
                         f"{rng.randint(2019, 2026)}-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}")
    for _ in range(15):
        generated.append(f"Order #{rng.randint(10**6, 10**8)}-{rng.choice(string.ascii_uppercase)}"
                         f"{rng.randint(100, 999)} shipped in {rng.randint(2, 9)} boxes")
    for _ in range(10):
        generated.append(f"base64 {_rand(ALNUM + '+/', 44)}==")
    return fixed + generated


def hard_positives() -> list[dict[str, object]]:
    """Real values in shapes the scanner leaves alone by design (each documented in docs/privacy.md)."""
    rows = []
    for _ in range(4):
        value = f"{rng.randint(201, 989)}{rng.randint(200, 999)}{rng.randint(0, 9999):04d}"
        rows.append(labelled("text me on {v} tonight", [("phone", value)], "hard_positive: no separators"))
    for _ in range(3):
        value = f"{rng.randint(1, 665):03d}{rng.randint(10, 99)}{rng.randint(1000, 9999)}"
        rows.append(labelled("SSN {v} on the form", [("us_ssn", value)], "hard_positive: nine bare digits"))
    rows.append(labelled("write to {v}", [("email", "anna (at) example (dot) com")], "hard_positive: obfuscated"))
    rows.append(labelled("server {v}", [("ipv6", "fe80::1ff:fe23:4567:890a")], "positive: link-local, 5 groups"))
    return rows


def main() -> None:
    rows = positives() + [{"text": t, "spans": [], "note": "hard_negative"} for t in negatives()] + hard_positives()
    rng.shuffle(rows)
    with OUT.open("w", encoding="utf-8") as out:
        for row in rows:
            out.write(json.dumps(row, ensure_ascii=False) + "\n")
    print(f"{len(rows)} lines -> {OUT}")


if __name__ == "__main__":
    main()
