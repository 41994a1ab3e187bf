"""Environment for test subprocesses: they import the same myxtts_ops and
myxtts as the test process (the installed wheel, or the source tree when
that is what runs), never a different copy that happens to be on sys.path."""

import os

TESTS_DIR = os.path.dirname(os.path.abspath(__file__))


def child_pythonpath():
    import myxtts
    import myxtts_ops

    paths = []
    for module in (myxtts_ops, myxtts):
        parent = os.path.dirname(os.path.dirname(os.path.abspath(module.__file__)))
        if parent not in paths:
            paths.append(parent)
    paths.append(TESTS_DIR)
    return os.pathsep.join(paths)


def child_env(**extra):
    env = dict(os.environ, PYTHONPATH=child_pythonpath(), TF_CPP_MIN_LOG_LEVEL="2")
    env.update(extra)
    return env
