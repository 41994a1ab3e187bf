"""Generates myxtts_ops/_lib/_state_layout.py from csrc/kernels/mel_loss_math.h.

The header's ``namespace state`` is the one definition of the running-statistics
state vector; the build (CMakeLists.txt) runs this script so the Python side
never restates it. Usage::

    python scripts/gen_state_layout.py HEADER OUTPUT

``parse_header`` is also what tests/test_state_layout.py compares the installed
module with.
"""

import re
import sys

_NAMESPACE = re.compile(r"namespace state \{(.*?)\n\}  // namespace state", re.S)
_CONSTANT = re.compile(r"constexpr (int|double) k(\w+) = ([^;]+);")
_NAMES = re.compile(r"constexpr const char\* kPublicFieldNames\[\] = \{(.*?)\};", re.S)


def _snake(camel):
    return re.sub(r"(?<!^)(?=[A-Z])", "_", camel).upper()


def parse_header(text):
    """Returns (constants: dict UPPER_SNAKE -> int|float, public field names: tuple)."""
    block = _NAMESPACE.search(text)
    if block is None:
        raise ValueError("no `namespace state { ... }  // namespace state` block in the header")
    body = block.group(1)
    constants, by_cpp_name = {}, {}
    for kind, name, expr in _CONSTANT.findall(body):
        # Expressions only combine earlier constants with + (e.g. kRingStart + kWindowSize).
        terms = [t.strip() for t in expr.split("+")]
        value = 0
        for term in terms:
            if term in by_cpp_name:
                value += by_cpp_name[term]
            else:
                value += int(term) if kind == "int" else float(term)
        value = int(value) if kind == "int" else float(value)
        by_cpp_name["k" + name] = value
        constants[_snake(name)] = value
    names = _NAMES.search(body)
    if names is None:
        raise ValueError("no kPublicFieldNames in namespace state")
    fields = tuple(re.findall(r'"(\w+)"', names.group(1)))
    return constants, fields


def render(constants, fields, source="csrc/kernels/mel_loss_math.h"):
    lines = [
        f'"""State vector layout, generated from {source} (namespace state)',
        'by scripts/gen_state_layout.py at build time. Do not edit."""',
        "",
    ]
    lines += [f"{name} = {value!r}" for name, value in constants.items()]
    lines += ["", f"PUBLIC_FIELD_NAMES = {fields!r}", ""]
    return "\n".join(lines)


def main(argv):
    if len(argv) != 3:
        sys.exit(__doc__)
    with open(argv[1]) as f:
        constants, fields = parse_header(f.read())
    text = render(constants, fields)
    with open(argv[2], "w") as f:
        f.write(text)


if __name__ == "__main__":
    main(sys.argv)
