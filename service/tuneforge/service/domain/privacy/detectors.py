"""What counts as personal data or a secret: one detector per kind, a pattern plus a check the pattern alone cannot
make (a checksum, a registry's length, an address parser), so that look-alikes (order ids, versions, dates,
hashes, numbers that fail Luhn) are not reported.

Every detector finds candidates with one compiled pattern and keeps those its ``accept`` says are real. The
patterns are anchored by look-arounds instead of ``\\b`` where a digit, a dot or a dash next to the match would
make it part of a longer token (``v1.2.3.4``, ``ORD-415-555-2671-X``).
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass


@dataclass(frozen=True)
class Span:
    kind: str
    start: int
    end: int


@dataclass(frozen=True)
class Detector:
    kind: str
    pattern: re.Pattern[str]
    #: the match's real span, or None to drop it (the default keeps the whole match)
    accept: Callable[[re.Match[str]], tuple[int, int] | None]
    #: a cheap necessary condition on the text and its number of digits: most strings fail it, and running a
    #: pattern with look-arounds over every position costs ~0.1 us per character (bench/pii_scanner.py)
    gate: Callable[[str, int], bool]

    def find(self, text: str, digits: int) -> Iterator[Span]:
        if not self.gate(text, digits):
            return
        for match in self.pattern.finditer(text):
            span = self.accept(match)
            if span is not None:
                yield Span(self.kind, *span)


def _whole(match: re.Match[str]) -> tuple[int, int]:
    return match.span()


def _digits(text: str) -> str:
    return "".join(c for c in text if c.isdigit())


def digit_count(text: str) -> int:
    """ASCII digits (bytes.translate deletes them in C: four times faster than counting each digit)."""
    data = text.encode("utf-8", "surrogatepass")
    return len(data) - len(data.translate(None, b"0123456789"))


# -- e-mail addresses --
# a local part, then labels and an alphabetic top-level domain: ``name@1.2.3`` (npm) and ``user@localhost``
# are not addresses
EMAIL = re.compile(
    r"(?<![\w.%+-])[A-Za-z0-9](?:[A-Za-z0-9._%+-]{0,62}[A-Za-z0-9_%+-])?"
    r"@(?:[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.)+[A-Za-z]{2,24}(?![\w-]|\.[A-Za-z0-9])"
)


# -- payment cards --
# the look-behind comes after the first character: a pattern that starts with a character class lets the regex
# engine skip to the next candidate character instead of trying every position (about twice as fast)
CARD = re.compile(r"\d(?<![\w-]\d)(?:[ -]?\d){12,18}(?![\w-])")
#: issuer prefixes (IIN ranges) of the networks a card number can belong to, with their lengths
_CARD_NETWORKS: tuple[tuple[re.Pattern[str], tuple[int, ...]], ...] = (
    (re.compile(r"4"), (13, 16, 19)),  # Visa
    (re.compile(r"5[1-5]|2(?:2[2-9]|[3-6]\d|7[01]|720)"), (16,)),  # Mastercard
    (re.compile(r"3[47]"), (15,)),  # American Express
    (re.compile(r"6(?:011|5|4[4-9])"), (16, 19)),  # Discover
    (re.compile(r"35(?:2[89]|[3-8]\d)"), (16, 19)),  # JCB
    (re.compile(r"3(?:0[0-5]|[689])"), (14, 16)),  # Diners Club
    (re.compile(r"62"), (16, 19)),  # UnionPay
)


def luhn_ok(number: str) -> bool:
    total = 0
    for i, char in enumerate(reversed(number)):
        d = int(char)
        if i % 2:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


def _card(match: re.Match[str]) -> tuple[int, int] | None:
    text = match.group()
    separators = {c for c in text if not c.isdigit()}
    if len(separators) > 1:  # one kind of separator: "4111 1111-1111 1111" is not how cards are written
        return None
    number = _digits(text)
    if len(set(number)) == 1:
        return None
    for prefix, lengths in _CARD_NETWORKS:
        if prefix.match(number) and len(number) in lengths:
            return match.span() if luhn_ok(number) else None
    return None


# -- IBANs --
#: ISO 13616 registry: each country's IBAN length
IBAN_LENGTHS = {
    "AD": 24, "AE": 23, "AL": 28, "AT": 20, "AZ": 28, "BA": 20, "BE": 16, "BG": 22, "BH": 22, "BR": 29, "BY": 28,
    "CH": 21, "CR": 22, "CY": 28, "CZ": 24, "DE": 22, "DK": 18, "DO": 28, "EE": 20, "EG": 29, "ES": 24, "FI": 18,
    "FO": 18, "FR": 27, "GB": 22, "GE": 22, "GI": 23, "GL": 18, "GR": 27, "GT": 28, "HR": 21, "HU": 28, "IE": 22,
    "IL": 23, "IQ": 23, "IS": 26, "IT": 27, "JO": 30, "KW": 30, "KZ": 20, "LB": 28, "LC": 32, "LI": 21, "LT": 20,
    "LU": 20, "LV": 21, "MC": 27, "MD": 24, "ME": 22, "MK": 19, "MR": 27, "MT": 31, "MU": 30, "NL": 18, "NO": 15,
    "PK": 24, "PL": 28, "PS": 29, "PT": 25, "QA": 29, "RO": 24, "RS": 22, "SA": 24, "SC": 31, "SE": 24, "SI": 19,
    "SK": 24, "SM": 27, "ST": 25, "SV": 28, "TL": 23, "TN": 24, "TR": 26, "UA": 29, "VA": 22, "VG": 24, "XK": 20,
}
# written compact or in groups of four; the candidate may run on into the next words, the length decides
IBAN = re.compile(r"[A-Z](?<![A-Za-z0-9][A-Z])[A-Z]\d{2}(?: ?[A-Z0-9]){11,30}")


def iban_ok(compact: str) -> bool:
    """ISO 7064 mod 97-10: the country and check digits moved to the end, letters as 10..35, remainder 1."""
    rearranged = compact[4:] + compact[:4]
    return int("".join(str(int(c, 36)) for c in rearranged)) % 97 == 1


def _iban(match: re.Match[str]) -> tuple[int, int] | None:
    text = match.group()
    length = IBAN_LENGTHS.get(text[:2])
    if length is None:
        return None
    kept, end = 0, 0
    for i, char in enumerate(text):
        if char != " ":
            kept += 1
            if kept == length:
                end = i + 1
                break
    if kept < length:
        return None
    full_end = match.start() + end
    after = match.string[full_end:full_end + 1]
    if after.isalnum():  # the code runs on: not this country's IBAN
        return None
    compact = text[:end].replace(" ", "")
    return (match.start(), full_end) if iban_ok(compact) else None


# -- national identifiers --
# US Social Security numbers, written with dashes (or spaces, consistently); nine bare digits are left alone:
# too many order numbers and ids look the same. Never issued: area 000, 666 and 900-999, group 00, serial 0000.
US_SSN = re.compile(r"\d(?<![\w-]\d)\d{2}(?<!000)(?<!666)(?<!9\d\d)([- ])(?!00)\d{2}\1(?!0000)\d{4}(?![\w-])")
# UK National Insurance numbers: two letters (not D, F, I, Q, U, V; the second not O; not the prefixes below),
# six digits, a suffix A-D; spaced in pairs or compact
UK_NINO = re.compile(r"[A-CEGHJ-PR-TW-Z](?<![A-Za-z0-9].)[A-CEGHJ-NPR-TW-Z](?<!BG|GB|NK|KN|TN|NT|ZZ)"
                     r"(?: ?\d{2}){3} ?[A-D](?![A-Za-z0-9])")


# -- IP addresses --
# four groups of digits; the address parser then refuses octets over 255 and leading zeros
IPV4 = re.compile(r"\d(?<![\w.]\d)\d{0,2}\.\d{1,3}\.\d{1,3}\.\d{1,3}(?![\w]|\.\d)")
IPV6 = re.compile(r"(?<![\w:.])[0-9A-Fa-f]{0,4}(?::[0-9A-Fa-f]{0,4}){2,7}(?:(?<=:)\d{1,3}(?:\.\d{1,3}){3})?"
                  r"(?![\w:]|\.\w)")


#: what precedes a four-part version number ("version 4.2.0.1", "foo==1.0.0.1"), which is not an address
_VERSION_BEFORE = re.compile(r"(?:version|ver\.?|release|build|v|==|>=|<=|~=|!=)\s*$", re.IGNORECASE)


def _ipv4(match: re.Match[str]) -> tuple[int, int] | None:
    try:
        address = ipaddress.IPv4Address(match.group())
    except ValueError:
        return None
    # not personal: the unspecified address, loopback, broadcast and netmasks ("255.255.255.0")
    if address.is_unspecified or address.is_loopback or match.group().startswith("255."):
        return None
    if _VERSION_BEFORE.search(match.string, max(0, match.start() - 12), match.start()):
        return None
    return match.span()


def _ipv6(match: re.Match[str]) -> tuple[int, int] | None:
    text = match.group()
    try:
        address = ipaddress.IPv6Address(text)
    except ValueError:
        return None
    groups = [g for g in text.split(":") if g]
    # "::1", "fe80::1" and C++'s "a::b" are not someone's address: three groups at least
    if address.is_loopback or address.is_unspecified or len(groups) < 3:
        return None
    return match.span()


# -- phone numbers --
PHONE = re.compile(
    # each branch starts with its own first character and checks what precedes it only then (see CARD)
    r"(?:"
    # international: +CC then groups (an optional "(0)" or area code in parentheses)
    r"\+(?<![\w+.-]\+)\d{1,3}(?:[ .-]?\(\d{1,4}\))?(?:[ .-]?\d{1,5}){2,6}"
    # North American: (NPA) NXX-XXXX, NPA-NXX-XXXX, NPA.NXX.XXXX, NPA NXX XXXX, optionally 1- first; area code
    # and exchange start with 2-9
    r"|1(?<![\w+.-]1)[ .-](?:\([2-9]\d{2}\) ?[2-9]\d{2}[-. ]|[2-9]\d{2}([-. ])[2-9]\d{2}\1)\d{4}"
    r"|\((?<![\w+.-]\()[2-9]\d{2}\) ?[2-9]\d{2}[-. ]\d{4}"
    r"|[2-9](?<![\w+.-][2-9])\d{2}([-. ])[2-9]\d{2}\2\d{4}"
    # national numbers with a trunk 0 (UK, most of Europe): 0AA BBBB CCCC, 0AAAA BBBBBB, 07700 900123
    r"|0(?<![\w+.-]0)\d{2,4}[ -]\d{3,4}(?:[ -]?\d{3,4})?"
    r")(?![\w]|[.-]\d)"
)


def _phone(match: re.Match[str]) -> tuple[int, int] | None:
    text = match.group()
    digits = _digits(text)
    if text.startswith("+"):
        return match.span() if 8 <= len(digits) <= 15 else None
    if text.startswith("0"):
        return match.span() if 10 <= len(digits) <= 11 else None
    return match.span()  # North American: the pattern's area and exchange rules (first digit 2-9) suffice


# -- secrets --
SECRET = re.compile(
    r"-----BEGIN (?:[A-Z0-9]+ )*PRIVATE KEY(?: BLOCK)?-----(?:[\s\S]*?-----END (?:[A-Z0-9]+ )*PRIVATE KEY"
    r"(?: BLOCK)?-----)?"
    r"|(?<![\w-])(?:"
    r"sk-(?:proj-|ant-(?:api\d\d-)?|live-|test-|svcacct-)?(?P<sk>[A-Za-z0-9_-]{20,})"  # OpenAI, Anthropic style
    r"|[sr]k_(?:live|test)_[A-Za-z0-9]{20,}"  # Stripe secret and restricted keys
    r"|(?:AKIA|ASIA|AGPA|AIDA|AROA|ANPA|ANVA|AIPA)[A-Z2-7]{16}"  # AWS access key ids
    r"|gh[pousr]_[A-Za-z0-9]{36,}"  # GitHub tokens
    r"|github_pat_[A-Za-z0-9_]{60,}"  # GitHub fine-grained tokens
    r"|xox[abposr]-[A-Za-z0-9-]{10,}"  # Slack tokens
    r"|AIza[0-9A-Za-z_-]{35}"  # Google API keys
    r"|glpat-[A-Za-z0-9_-]{20,}"  # GitLab personal tokens
    r"|(?i:aws_secret_access_key)[\"']?\s*[:=]\s*[\"']?[A-Za-z0-9/+=]{40}"  # an AWS secret, named
    r")(?![\w-])"
)


#: one of these is in every text the secret pattern can match
SECRET_TRIGGERS = ("sk-", "sk_", "rk_", "AKIA", "ASIA", "AGPA", "AIDA", "AROA", "ANPA", "ANVA", "AIPA", "ghp_", "gho_",
                   "ghu_", "ghs_", "ghr_", "github_pat_", "xox", "AIza", "glpat-", "PRIVATE KEY", "ccess_key",
                   "CCESS_KEY", "ccess_Key")
_TRIGGER = re.compile("|".join(re.escape(t) for t in SECRET_TRIGGERS))


def _secret(match: re.Match[str]) -> tuple[int, int] | None:
    body = match.group("sk")
    # "sk-learn-is-a-library" is prose: a key is random, so it has digits and many distinct characters
    if body is not None and (not any(c.isdigit() for c in body) or len(set(body)) < 12):
        return None
    return match.span()


#: in order of precedence: where two kinds overlap the earlier one wins (a longer span wins first)
DETECTORS: tuple[Detector, ...] = (
    Detector("secret", SECRET, _secret, lambda text, _: _TRIGGER.search(text) is not None),
    Detector("email", EMAIL, _whole, lambda text, _: "@" in text),
    Detector("iban", IBAN, _iban, lambda _, digits: digits >= 2),
    Detector("credit_card", CARD, _card, lambda _, digits: digits >= 13),
    Detector("us_ssn", US_SSN, _whole, lambda _, digits: digits >= 9),
    Detector("uk_nino", UK_NINO, _whole, lambda _, digits: digits >= 6),
    Detector("ipv6", IPV6, _ipv6, lambda text, _: text.count(":") >= 2),
    Detector("ipv4", IPV4, _ipv4, lambda text, digits: digits >= 4 and "." in text),
    Detector("phone", PHONE, _phone, lambda _, digits: digits >= 8),
)
KINDS: tuple[str, ...] = tuple(d.kind for d in DETECTORS)
PRECEDENCE = {kind: i for i, kind in enumerate(KINDS)}
