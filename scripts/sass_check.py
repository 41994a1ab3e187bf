#!/usr/bin/env python3
"""SASS check of the fused kernels (a step of scripts/gpu_check.sh).

    cuobjdump -sass myxtts_ops/kernels*.so > sass.txt
    python3 scripts/sass_check.py sass.txt

For every forward/backward kernel: 128-bit global loads (LDG.E.128) present,
no local memory (LDL/STL). Prints a table; exit status 1 when a kernel fails.
"""

import re
import subprocess
import sys

KERNEL_NAMES = ("forward_kernel", "backward_kernel")


def demangle(name: str) -> str:
    try:
        return subprocess.run(["c++filt", name], capture_output=True, text=True).stdout.strip()
    except OSError:
        return name


def kernel_bodies(text: str) -> dict:
    """{mangled function name: its SASS lines} of a ``cuobjdump -sass`` listing."""
    funcs, cur = {}, None
    for line in text.splitlines():
        m = re.search(r"Function : (\S+)", line)
        if m:
            cur = m.group(1)
            funcs.setdefault(cur, [])
            continue
        if cur:
            funcs[cur].append(line)
    return funcs


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        print(__doc__)
        return 2
    with open(argv[0], encoding="utf-8", errors="replace") as f:
        funcs = kernel_bodies(f.read())
    bad = checked = 0
    print(f"{'kernel':70} {'LDG.128':>8} {'LDG':>5} {'STG.128':>8} {'LDL':>4} {'STL':>4}")
    for name, lines in funcs.items():
        if not any(k in name for k in KERNEL_NAMES):
            continue
        checked += 1
        body = "\n".join(lines)
        ldg128 = len(re.findall(r"\bLDG(?:\.[A-Z0-9_]+)*\.128\b", body))
        ldg = len(re.findall(r"\bLDG\.", body))
        stg128 = len(re.findall(r"\bSTG(?:\.[A-Z0-9_]+)*\.128\b", body))
        ldl = len(re.findall(r"\bLDL\b", body))
        stl = len(re.findall(r"\bSTL\b", body))
        short = re.sub(r"myxtts_ops::|\(anonymous namespace\)::", "", demangle(name))
        short = short.split("(")[0][:70]
        print(f"{short:70} {ldg128:8d} {ldg:5d} {stg128:8d} {ldl:4d} {stl:4d}")
        if ldg128 == 0 or ldl or stl:
            bad += 1
    if not checked:
        print("SASS check: no forward/backward kernel found in the listing")
        return 1
    print(
        "SASS check:",
        "OK (128-bit loads, no local memory)"
        if not bad
        else f"{bad} kernel(s) without LDG.E.128 or with LDL/STL",
    )
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
