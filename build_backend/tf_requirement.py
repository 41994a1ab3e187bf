"""Which TensorFlow myxtts-ops is built against, and what the wheel then requires.

The op library only loads into the TensorFlow minor version it was compiled
for, so the build uses the TensorFlow the user already has (same distribution,
exact version) and the wheel's cpu/gpu extras name that minor. Read by the PEP 517
backend (build requirements) and by setup.py (install_requires, extras).
Standard library only: it runs before anything else is installed.
"""

import re
import sysconfig
from importlib import metadata

# Every TensorFlow minor the op compiles against and is tested with (CI builds
# the oldest and the newest).
OLDEST_SUPPORTED = (2, 16)
NEWEST_SUPPORTED = (2, 21)
# What an isolated build uses when the target environment has no TensorFlow.
FALLBACK_DISTRIBUTION = "tensorflow-cpu"
# Distributions that install the `tensorflow` package.
TENSORFLOW_DISTRIBUTIONS = (
    "tensorflow",
    "tensorflow-cpu",
    "tensorflow-intel",
    "tf-nightly",
    "tf-nightly-cpu",
)


class UnsupportedTensorFlowError(RuntimeError):
    """The installed TensorFlow is older than any the op compiles against."""


def _canonical(name):
    return re.sub(r"[-_.]+", "-", name).lower()


def minor_of(version):
    """'2.16.2' -> (2, 16)."""
    parts = re.match(r"(\d+)\.(\d+)", version)
    if not parts:
        raise ValueError(f"not a TensorFlow version: {version!r}")
    return int(parts.group(1)), int(parts.group(2))


def target_site_paths():
    """The site-packages of the interpreter being installed into. An isolated
    build hides them from sys.path, but sysconfig still names them."""
    return list(dict.fromkeys([sysconfig.get_path("purelib"), sysconfig.get_path("platlib")]))


def find_tensorflow(paths=None):
    """(distribution name, version) of the TensorFlow installed on `paths`
    (default sys.path), or None. The first of TENSORFLOW_DISTRIBUTIONS wins."""
    found = {}
    for dist in metadata.distributions(**({"path": paths} if paths is not None else {})):
        name = _canonical(dist.metadata["Name"] or "")
        if name in TENSORFLOW_DISTRIBUTIONS and name not in found:
            found[name] = dist.version
    for name in TENSORFLOW_DISTRIBUTIONS:
        if name in found:
            return name, found[name]
    return None


def check_supported(name, version):
    """Raise for a TensorFlow older than the oldest supported; returns a warning
    text (or None) for one newer than the newest tested."""
    minor = minor_of(version)
    span = "%d.%d to %d.%d" % (OLDEST_SUPPORTED + NEWEST_SUPPORTED)
    if minor < OLDEST_SUPPORTED:
        raise UnsupportedTensorFlowError(
            f"myxtts-ops supports TensorFlow {span}, but {name} {version} is installed. "
            f"Upgrade it (`pip install '{name}=={NEWEST_SUPPORTED[0]}.{NEWEST_SUPPORTED[1]}.*'`) "
            "and install myxtts-ops again."
        )
    if minor > NEWEST_SUPPORTED:
        return (
            f"myxtts-ops is tested with TensorFlow {span}; building against {name} "
            f"{version} anyway."
        )
    return None


def build_requirement(installed):
    """The TensorFlow requirement of the build: exactly the installed one (so the
    library fits it and pip does not replace it), else the newest supported."""
    if installed is None:
        return f"{FALLBACK_DISTRIBUTION}=={NEWEST_SUPPORTED[0]}.{NEWEST_SUPPORTED[1]}.*"
    name, version = installed
    check_supported(name, version)
    return f"{name}=={version}"


def wheel_requirements(built_against, installed):
    """(install_requires additions, extras) for a build compiled against
    `built_against` = (name, version) when the target environment holds
    `installed` (or None).

    Only the extras name a TensorFlow (the minor it was built for): a base
    requirement would name one distribution, and a wheel carried to a machine
    with another (tensorflow-cpu against tensorflow with CUDA) would install it
    beside the user's, two packages writing one `tensorflow/`. `[cpu]` names the
    distribution the build environment has, so it never replaces it. A later
    change of TensorFlow minor is caught when the op library loads, with what
    to reinstall.
    """
    major, minor = minor_of(built_against[1])
    pin = f"=={major}.{minor}.*"
    cpu_distribution = installed[0] if installed is not None else FALLBACK_DISTRIBUTION
    extras = {"cpu": [f"{cpu_distribution}{pin}"], "gpu": [f"tensorflow[and-cuda]{pin}"]}
    return [], extras


def cuda_major_of_tensorflow(name):
    """The CUDA major version the installed TensorFlow's `and-cuda` extra runs on
    (from its nvidia-cuda-runtime-cuXX requirement), or None."""
    try:
        requires = metadata.requires(name) or []
    except metadata.PackageNotFoundError:
        return None
    for requirement in requires:
        match = re.match(r"nvidia-cuda-runtime-cu(\d+)", requirement)
        if match:
            return int(match.group(1))
    return None
