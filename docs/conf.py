"""Sphinx configuration for sk_fastif (build: ``make docs``, or ``make -C docs html``).

The gallery executes ``examples/plot_*.py`` and renders their figures (``-D plot_gallery=0``
skips that). Links to other projects' documentation (intersphinx) need the network and are off
unless ``SK_FASTIF_INTERSPHINX=1`` is set.
"""

import os
import re
import sys
from pathlib import Path

# the package of this checkout, also when Sphinx runs from elsewhere
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import sk_fastif  # noqa: E402

project = "sk_fastif"
author = "sk_fastif developers"
copyright = "sk_fastif developers"
release = sk_fastif.__version__
version = release

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.doctest",
    "sphinx.ext.mathjax",
    "numpydoc",
    "myst_parser",
    "sphinx_gallery.gen_gallery",
]
autosummary_generate = True
numpydoc_show_class_members = False
numpydoc_class_members_toctree = False
templates_path = []
exclude_patterns = ["_build", "auto_examples/*.ipynb", "auto_examples/*.py",
                    "auto_examples/*.zip", "auto_examples/*.json", "auto_examples/*.md5"]
html_theme = "pydata_sphinx_theme"
html_static_path = ["_static"]
html_theme_options = {"navigation_with_keys": False}

sphinx_gallery_conf = {
    "examples_dirs": "../examples",
    "gallery_dirs": "auto_examples",
    "filename_pattern": r"/plot_",
    "abort_on_example_error": True,
    "image_scrapers": ("matplotlib",),
    "write_computation_times": False,
    "download_all_examples": False,
}

if os.environ.get("SK_FASTIF_INTERSPHINX") == "1":
    extensions.append("sphinx.ext.intersphinx")
    intersphinx_mapping = {
        "python": ("https://docs.python.org/3", None),
        "numpy": ("https://numpy.org/doc/stable", None),
        "sklearn": ("https://scikit-learn.org/stable", None),
        "skorch": ("https://skorch.readthedocs.io/en/stable", None),
        "torch": ("https://pytorch.org/docs/stable", None),
    }


_TRAILING_UNDERSCORE = re.compile(r"\b([A-Za-z]\w*)_(?=[\s,;:.)\]]|$)")


def _escape_fitted_names(app, what, name, obj, options, lines):
    """Let fitted-attribute names such as ``n_samples_fit_`` appear bare in parameter types.

    reST reads a bare word ending in ``_`` as a link to a target of that name, so an attribute
    type like ``ndarray of shape (n_samples_fit_, k)`` would fail the build. In the type part of
    numpydoc's ``**name** : type`` lines only, outside backquotes, such an underscore is escaped.
    """
    for i, line in enumerate(lines):
        head, sep, kind = line.partition("** : ")
        if not sep:
            continue
        parts = re.split(r"(`+[^`]*`+)", kind)
        lines[i] = head + sep + "".join(
            part if part.startswith("`") else _TRAILING_UNDERSCORE.sub(r"\1\\_", part)
            for part in parts)


def setup(app):
    # after numpydoc (priority 500) has turned the sections into reST
    app.connect("autodoc-process-docstring", _escape_fitted_names, priority=900)
