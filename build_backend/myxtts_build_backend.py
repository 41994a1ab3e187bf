"""PEP 517 backend of myxtts-ops: setuptools.build_meta, plus a build
requirement on the TensorFlow the target environment already has.

pip's isolated build environment would otherwise install whatever TensorFlow
pyproject.toml names, and the op library would not load into the user's. Here
the build asks for the same distribution at the exact installed version (the
newest supported when there is none). With --no-build-isolation these hooks
are not consulted and the build uses the installed TensorFlow directly.
"""

import sys

import tf_requirement
from setuptools import build_meta as _setuptools
from setuptools.build_meta import *  # noqa: F401,F403  (every other hook as is)


def _tensorflow_requirement():
    installed = tf_requirement.find_tensorflow(tf_requirement.target_site_paths())
    if installed is not None:
        warning = tf_requirement.check_supported(*installed)
        if warning:
            print(f"myxtts-ops: {warning}", file=sys.stderr)
    requirement = tf_requirement.build_requirement(installed)
    print(f"myxtts-ops: building against {requirement}", file=sys.stderr)
    return requirement


def get_requires_for_build_wheel(config_settings=None):
    return _setuptools.get_requires_for_build_wheel(config_settings) + [_tensorflow_requirement()]


def get_requires_for_build_editable(config_settings=None):
    return _setuptools.get_requires_for_build_editable(config_settings) + [
        _tensorflow_requirement()
    ]
