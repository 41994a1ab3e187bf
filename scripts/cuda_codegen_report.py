"""Compile the CUDA kernels for one architecture and report, per kernel, the
16-byte vector memory instructions in the PTX, local-memory use and ptxas
register/spill figures. Needs only nvcc (no GPU).

    python scripts/cuda_codegen_report.py [--arch sm_90] [--json PATH]
"""

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SOURCE = os.path.join(ROOT, "csrc", "kernels", "mel_loss_cuda.cu")


def _short(mangled):
    """forward<float32,l1> from a mangled kernel name."""
    kind = "forward" if "forward_kernel" in mangled else "backward"
    if "10bfloat16_t" in mangled:
        dtype = "bfloat16"
    elif "6half_t" in mangled:
        dtype = "float16"
    else:
        dtype = "float32" if "_kernelIf" in mangled else "float64"
    loss = "huber" if "LossTypeE1" in mangled else "l1"
    return f"{kind}<{dtype},{loss}>"


def report(arch="sm_90"):
    nvcc = shutil.which("nvcc")
    if nvcc is None:
        raise FileNotFoundError("nvcc not found on PATH")
    flags = [
        "-std=c++17",
        "-O3",
        f"-arch={arch}",
        "--expt-relaxed-constexpr",
        "-I" + os.path.join(ROOT, "csrc", "kernels"),
    ]
    with tempfile.TemporaryDirectory() as tmp:
        ptx_path = os.path.join(tmp, "k.ptx")
        subprocess.run(
            [nvcc, *flags, "-ptx", SOURCE, "-o", ptx_path], check=True, capture_output=True
        )
        ptx = open(ptx_path).read()
        ptxas = subprocess.run(
            [nvcc, *flags, "-Xptxas", "-v", "-c", SOURCE, "-o", os.path.join(tmp, "k.o")],
            check=True,
            capture_output=True,
            text=True,
        ).stderr
    kernels = {}
    entries = list(re.finditer(r"\.entry (\S+)\(", ptx))
    for i, m in enumerate(entries):
        body = ptx[m.end() : entries[i + 1].start() if i + 1 < len(entries) else len(ptx)]
        vec = sorted(
            set(
                f"{a}.v{b}.{c}"
                for a, b, c in re.findall(r"(ld|st)\.global[.a-z]*\.v(2|4)\.([a-z]+\d+)", body)
            )
        )
        kernels[m.group(1)] = {
            "name": _short(m.group(1)),
            "vector_memory_ops": vec,
            "ptx_local_refs": len(re.findall(r"\.local", body)),
        }
    current = None
    for line in ptxas.splitlines():
        m = re.search(r"Compiling entry function '(\S+)'", line)
        if m:
            current = kernels.get(m.group(1))
            continue
        if current is None:
            continue
        m = re.search(
            r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads", line
        )
        if m:
            current["stack_bytes"], current["spill_stores"], current["spill_loads"] = map(
                int, m.groups()
            )
        m = re.search(r"Used (\d+) registers", line)
        if m:
            current["registers"] = int(m.group(1))
    return sorted(kernels.values(), key=lambda k: k["name"])


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", default="sm_90")
    parser.add_argument("--json")
    args = parser.parse_args(argv)
    rows = report(args.arch)
    print(f"{'kernel':32} {'regs':>4} {'stack':>5} {'spill':>5}  16-byte ops")
    for r in rows:
        print(
            f"{r['name']:32} {r.get('registers', '?'):>4} {r.get('stack_bytes', '?'):>5} "
            f"{r.get('spill_stores', '?'):>5}  {' '.join(r['vector_memory_ops'])}"
        )
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=2)


if __name__ == "__main__":
    sys.exit(main())
