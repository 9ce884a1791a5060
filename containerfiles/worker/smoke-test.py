"""Build-time smoke test of the worker image (run with python -W error).

Builds matplotlib's font cache (MPLCONFIGDIR is set by the caller), renders a
plot with a Chinese title (a missing glyph is a warning, hence an error), and
imports the scientific stack and the document libraries so a broken wheel
fails the build, not a user.
"""
import io

import matplotlib

matplotlib.use("agg")
import matplotlib.pyplot as plt  # noqa: E402

import numpy, pandas, scipy, sympy, sklearn, PIL  # noqa: E401,E402,F401
import ipykernel, ipykernel.kernelapp  # noqa: E401,E402,F401
import docx, pptx, openpyxl, pypdf, reportlab.pdfgen.canvas  # noqa: E401,E402,F401

fig, ax = plt.subplots()
ax.plot([1, 2], [-1, 2])
ax.set_title("中文标题")
fig.savefig(io.BytesIO(), format="png")
print("smoke test ok: matplotlib", matplotlib.__version__, "numpy", numpy.__version__)
