#!@ESM_EMU_PYTHON@ -I
"""esm-emu PRERUN hook for a CIME case, installed by `esm-emu cime install`.

CIME imports this file and calls esm_emu_prerun(caseroot) before the model runs; it also runs as
an executable: `esm_emu_prerun.py CASEROOT`. The work is done by the esm-emu installation whose
Python interpreter was recorded at install time, in isolated mode (-I), so nothing is imported or
executed from the case directory or from the interpreter CIME happens to run under.
"""
import os
import subprocess
import sys

ESM_EMU_PYTHON = "@ESM_EMU_PYTHON@"
HOOK = "prerun"


def _delegate(args):
    """Run the hook in the recorded interpreter; relay its output to sys.stdout (CIME's log)."""
    env = dict(os.environ)
    cime = sys.modules.get("CIME")
    if cime is not None and getattr(cime, "__file__", None):
        env["ESM_EMU_CIMEROOT"] = os.path.dirname(os.path.dirname(os.path.abspath(cime.__file__)))
    code = "import sys; from cime_hooks.run import main; sys.exit(main(sys.argv[1:]))"
    proc = subprocess.Popen([ESM_EMU_PYTHON, "-I", "-c", code, HOOK] + [str(a) for a in args],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env,
                            cwd=str(args[0]), universal_newlines=True)
    last = ""
    for line in proc.stdout:
        sys.stdout.write(line)
        sys.stdout.flush()
        last = line.strip() or last
    if proc.wait() != 0:
        # RuntimeError, not AttributeError/SyntaxError: CIME would retry those as a shell command.
        raise RuntimeError("esm-emu {} hook failed: {}".format(HOOK, last))


def esm_emu_prerun(caseroot):
    _delegate([caseroot])


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: {} CASEROOT".format(os.path.basename(sys.argv[0])))
    try:
        esm_emu_prerun(os.path.abspath(sys.argv[1]))
    except RuntimeError as e:
        sys.exit(str(e))
