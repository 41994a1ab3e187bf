"""What the README states about the loss's settings and names, checked against the code.

The settings table is hand-written for readers; XTTSLossConfig is the one
source of the names and defaults, and this test fails when the two part.
"""

import ast
import dataclasses
import os
import re
import subprocess
import sys
import textwrap

import pytest

from child_env import child_env

README = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "README.md")


def _readme():
    if not os.path.exists(README):
        pytest.skip(f"no README.md beside tests/ ({README})")
    with open(README, encoding="utf-8") as f:
        return f.read()


def _settings_table(text):
    """``name -> default`` of the table under the README's "### Settings" heading."""
    section = text.split("\n### Settings\n", 1)
    assert len(section) == 2, "README.md has no '### Settings' section"
    rows = {}
    for line in section[1].splitlines():
        match = re.fullmatch(r"\| `(\w+)` \| ([^|]+) \| [^|]+ \|", line)
        if match:
            name, default = match.group(1), match.group(2).strip()
            assert name not in rows, f"{name} is listed twice"
            rows[name] = ast.literal_eval(default)
        elif rows and not line.startswith("|"):
            break
    return rows


def test_settings_table_lists_every_setting_with_its_default():
    from myxtts_loss import XTTSLossConfig

    documented = _settings_table(_readme())
    defaults = {f.name: f.default for f in dataclasses.fields(XTTSLossConfig)}
    assert sorted(documented) == sorted(defaults), (
        f"missing from the README: {sorted(set(defaults) - set(documented))}; "
        f"not settings: {sorted(set(documented) - set(defaults))}"
    )
    for name, default in defaults.items():
        value = documented[name]
        # The type too: 50 for an integer setting, 1.0 for a real one.
        assert (type(value), value) == (type(default), default), (
            f"{name}: README says {value!r}, the code's default is {default!r}"
        )


def test_settings_table_order_follows_the_config():
    """The table reads in the dataclass's order (the constructor's 17 first)."""
    from myxtts_loss import XTTSLossConfig

    assert list(_settings_table(_readme())) == list(XTTSLossConfig.field_names())


def test_submodules_are_attributes_after_a_plain_import():
    """``import myxtts_loss`` then ``myxtts_loss.callbacks.XTTSLossValidation``, as the
    README writes it, in a fresh interpreter (nothing imported before), without
    importing TensorFlow for the lookup of a name that is not there."""
    code = textwrap.dedent(
        """
        import sys
        import myxtts_loss
        try:
            myxtts_loss.no_such_name
        except AttributeError as err:
            assert "no_such_name" in str(err), err
        else:
            raise AssertionError("no AttributeError")
        assert "tensorflow" not in sys.modules
        assert {"callbacks", "gradient_norm", "terms", "rule"} <= set(dir(myxtts_loss))
        assert myxtts_loss.callbacks.XTTSLossValidation is myxtts_loss.XTTSLossValidation
        assert myxtts_loss.gradient_norm.feed_gradient_norm is myxtts_loss.feed_gradient_norm
        print("OK")
        """
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=child_env(), timeout=300
    )
    assert proc.returncode == 0 and proc.stdout.strip().endswith("OK"), proc.stderr[-3000:]
