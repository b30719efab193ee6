"""``__main__.py`` of rbee.pyz (copied there by build/build.py): check the interpreter, then start.

This file and ``_rbee_pythons`` (a copy of ``rbee/pythons.py``) are all that run before the check,
so both keep to syntax that any Python 3 from 3.6 on parses: one it does not support gets the
one-line refusal and exit code 1, not a traceback from newer code.
"""

import os
import sys

import _rbee_pythons

if sys.implementation.name != "cpython" or not _rbee_pythons.is_supported(sys.version_info):
    name = "Python" if sys.implementation.name == "cpython" else sys.implementation.name
    found = name + " " + sys.version.split()[0]
    sys.stderr.write("rbee: error: " + _rbee_pythons.refusal(found, sys.executable) + "\n")
    sys.exit(1)

import _rbee_boot  # only a supported interpreter may import it

_rbee_boot.run(os.path.dirname(os.path.abspath(__file__)))
