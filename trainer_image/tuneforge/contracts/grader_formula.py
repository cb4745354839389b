"""The ``calculate_output`` formula of a ``multi`` grader: parsed once into an allow-listed tree, never ``eval``-ed.

Grammar (OpenAI's): numbers, the sub-grader names, ``+ - * /``, ``^`` (power; ``**`` works too), parentheses,
unary minus/plus, and the functions ``min``, ``max`` (one or more arguments), ``abs``, ``floor``, ``ceil``,
``exp``, ``sqrt``, ``log`` (natural logarithm; one argument each). Everything else (attribute access,
indexing, strings, comparisons, other names or calls, keyword arguments, comprehensions, lambdas, ...) is
refused with a :class:`FormulaError` that names the offending piece of text.

Evaluation is float arithmetic on the sub-grader scores of one completion; a division by zero, a math
domain error, an overflow or a non-finite result scores ``0.0`` for that completion instead of failing.

Shared by the service (a 400 at job creation) and the trainer (exit 65), so it imports only the standard
library.
"""

from __future__ import annotations

import ast
import math
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

#: longest accepted ``calculate_output``
MAX_FORMULA_LENGTH = 500
#: most sub-graders one ``multi`` grader may hold
MAX_SUB_GRADERS = 8
#: deepest accepted nesting of operators and calls
MAX_FORMULA_DEPTH = 64
#: a sub-grader name: an ASCII identifier (it is a variable of the formula)
GRADER_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,63}")

_UNARY: dict[str, Callable[[float], float]] = {
    "abs": abs,
    "floor": lambda x: float(math.floor(x)),
    "ceil": lambda x: float(math.ceil(x)),
    "exp": math.exp,
    "sqrt": math.sqrt,
    "log": math.log,
}
_VARIADIC: dict[str, Callable[..., float]] = {"min": min, "max": max}
#: functions a formula may call
FUNCTIONS = frozenset(_UNARY) | frozenset(_VARIADIC)

_BINARY: dict[type[ast.operator], Callable[[float, float], float]] = {
    ast.Add: lambda a, b: a + b,
    ast.Sub: lambda a, b: a - b,
    ast.Mult: lambda a, b: a * b,
    ast.Div: lambda a, b: a / b,
    ast.Pow: math.pow,  # float power: overflow raises, a negative base with a fractional exponent is a domain error
}
_OPERATOR_TEXT: dict[type[ast.AST], str] = {
    ast.Mod: "%", ast.FloorDiv: "//", ast.MatMult: "@", ast.LShift: "<<", ast.RShift: ">>", ast.BitOr: "|",
    ast.BitAnd: "&", ast.BitXor: "^", ast.Invert: "~", ast.Not: "not",
}
_KIND: dict[type[ast.AST], str] = {
    ast.Attribute: "attribute access", ast.Subscript: "indexing", ast.Constant: "constant",
    ast.Compare: "comparison", ast.BoolOp: "boolean operator", ast.IfExp: "conditional expression",
    ast.Lambda: "lambda", ast.ListComp: "comprehension", ast.SetComp: "comprehension",
    ast.DictComp: "comprehension", ast.GeneratorExp: "comprehension", ast.List: "list", ast.Tuple: "tuple",
    ast.Dict: "dict", ast.Set: "set", ast.Starred: "starred argument", ast.NamedExpr: "assignment",
    ast.JoinedStr: "string", ast.Await: "await", ast.Yield: "yield", ast.YieldFrom: "yield", ast.Slice: "slice",
}

Node = Callable[[Mapping[str, float]], float]


class FormulaError(ValueError):
    """An invalid ``calculate_output``; ``token`` is the offending piece of text when there is one."""

    def __init__(self, message: str, token: str | None = None) -> None:
        super().__init__(message)
        self.token = token


def check_grader_name(name: object) -> str | None:
    """Why ``name`` cannot name a sub-grader, or None when it can."""
    if not isinstance(name, str) or not GRADER_NAME.fullmatch(name):
        return (f"sub-grader name {name!r} must be an identifier (letters, digits and '_', not starting with a "
                "digit, at most 64 characters): the formula refers to it")
    if name in FUNCTIONS:
        return f"sub-grader name {name!r} is a function of calculate_output; choose another name"
    if name == "std":
        return "sub-grader name 'std' is reserved (its metric would clash with 'reward_std')"
    return None


@dataclass(frozen=True)
class Formula:
    """A validated formula; :meth:`evaluate` computes it for one completion's sub-grader scores."""

    text: str
    #: the sub-grader names the formula uses
    names: frozenset[str]
    _root: Node = field(repr=False, compare=False)

    def evaluate(self, scores: Mapping[str, float]) -> float:
        """The formula's value, or 0.0 when the arithmetic fails or the result is not a finite number."""
        try:
            value = float(self._root(scores))
        except (ArithmeticError, ValueError):  # ZeroDivisionError, OverflowError, math domain errors
            return 0.0
        return value if math.isfinite(value) else 0.0


def parse_formula(text: object, names: Iterable[str]) -> Formula:
    """Parse and check ``text`` against the sub-grader ``names``; raises :class:`FormulaError`."""
    if not isinstance(text, str) or not text.strip():
        raise FormulaError("calculate_output must be a non-empty formula string, e.g. '0.2 * format + 0.8 * correct'")
    if len(text) > MAX_FORMULA_LENGTH:
        raise FormulaError(f"calculate_output is longer than {MAX_FORMULA_LENGTH} characters")
    known = frozenset(names)
    # '^' is power (OpenAI's syntax). Python's '^' is XOR with a lower precedence than '+', so it is rewritten
    # to '**' before parsing (no string literal can hold a '^': strings are refused).
    source = text.replace("^", "**").strip()
    try:
        tree = ast.parse(source, mode="eval")
    except SyntaxError as exc:
        where = ""
        if exc.offset and exc.lineno == 1:  # back to a column of the text as written ('^' became '**')
            leading = len(text) - len(text.lstrip())
            column = exc.offset - 1 - source[: exc.offset - 1].count("**") + leading + 1
            where = f" at column {column}"
        raise FormulaError(f"calculate_output is not a valid formula: {exc.msg}{where}") from None
    except (ValueError, RecursionError, MemoryError):
        raise FormulaError("calculate_output is not a valid formula") from None
    used: set[str] = set()
    root = _Compiler(source, known, used, caret="**" not in text).node(tree.body)
    return Formula(text=text, names=frozenset(used), _root=root)


class _Compiler:
    def __init__(self, source: str, known: frozenset[str], used: set[str], caret: bool) -> None:
        self.source = source
        #: the text wrote powers as '^': show them so in messages
        self.caret = caret
        self.known = known
        self.used = used
        self.depth = 0

    def _text(self, node: ast.AST) -> str:
        text = ast.get_source_segment(self.source, node) or type(node).__name__
        if self.caret:
            text = text.replace("**", "^")
        return text if len(text) <= 60 else text[:57] + "..."

    def _refuse(self, node: ast.AST, what: str | None = None) -> FormulaError:
        token = self._text(node)
        kind = what or _KIND.get(type(node), type(node).__name__)
        return FormulaError(f"calculate_output: {kind} {token!r} is not allowed", token)

    def node(self, node: ast.expr) -> Node:
        self.depth += 1
        try:
            if self.depth > MAX_FORMULA_DEPTH:
                raise FormulaError(f"calculate_output is nested more than {MAX_FORMULA_DEPTH} levels deep")
            return self._node(node)
        finally:
            self.depth -= 1

    def _node(self, node: ast.expr) -> Node:
        if isinstance(node, ast.Constant):
            return self._constant(node)
        if isinstance(node, ast.Name):
            return self._name(node)
        if isinstance(node, ast.BinOp):
            op = _BINARY.get(type(node.op))
            if op is None:
                sign = _OPERATOR_TEXT.get(type(node.op), type(node.op).__name__)
                raise FormulaError(f"calculate_output: operator {sign!r} is not allowed (use + - * / ^)", sign)
            left, right = self.node(node.left), self.node(node.right)
            return lambda s: op(left(s), right(s))
        if isinstance(node, ast.UnaryOp):
            if isinstance(node.op, ast.USub):
                operand = self.node(node.operand)
                return lambda s: -operand(s)
            if isinstance(node.op, ast.UAdd):
                return self.node(node.operand)
            sign = _OPERATOR_TEXT.get(type(node.op), type(node.op).__name__)
            raise FormulaError(f"calculate_output: operator {sign!r} is not allowed (use + - * / ^)", sign)
        if isinstance(node, ast.Call):
            return self._call(node)
        raise self._refuse(node)

    def _constant(self, node: ast.Constant) -> Node:
        value = node.value
        if isinstance(value, bool) or not isinstance(value, int | float):
            kind = "string" if isinstance(value, str | bytes) else "constant"
            raise self._refuse(node, kind)
        try:
            number = float(value)
        except OverflowError:
            raise self._refuse(node, "number too large:") from None
        if not math.isfinite(number):
            raise self._refuse(node, "number too large:")
        return lambda s: number

    def _name(self, node: ast.Name) -> Node:
        name = node.id
        if name in FUNCTIONS:
            raise FormulaError(f"calculate_output: function {name!r} must be called, e.g. {name}(x)", name)
        if name not in self.known:
            expected = ", ".join(sorted(self.known)) or "(none)"
            raise FormulaError(f"calculate_output: unknown name {name!r}; the sub-graders are {expected}", name)
        self.used.add(name)
        return lambda s: float(s[name])

    def _call(self, node: ast.Call) -> Node:
        func = node.func
        if not isinstance(func, ast.Name) or func.id not in FUNCTIONS:
            allowed = ", ".join(sorted(FUNCTIONS))
            token = self._text(func)
            raise FormulaError(f"calculate_output: call of {token!r} is not allowed; functions: {allowed}", token)
        if node.keywords:
            raise self._refuse(node.keywords[0], "keyword argument")
        args = [self.node(arg) for arg in node.args]  # a Starred argument is refused here
        name = func.id
        if name in _UNARY:
            if len(args) != 1:
                raise FormulaError(f"calculate_output: {name}() takes exactly one argument, got {len(args)}", name)
            unary, (arg,) = _UNARY[name], args
            return lambda s: unary(arg(s))
        if not args:
            raise FormulaError(f"calculate_output: {name}() needs at least one argument", name)
        variadic = _VARIADIC[name]
        return lambda s: variadic(a(s) for a in args)
