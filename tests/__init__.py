"""hwprune's tests: ``unit/`` laid out like the package, ``e2e/`` the ones that profile, compile and time a whole
model (marked ``e2e``, as are the few such tests kept beside the units they cover), ``house/`` the project's own
rules (layering, packaging, the manual). Support modules (zoo, goldens, random graphs, tiny configurations) sit
here, shared by all."""

from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(__file__).resolve().parent / "data"
