#!/usr/bin/env bash
# Fetches the Python packages whose docstrings, comments and docs top up this machine's own
# text to a corpus of a million sentences, and unpacks their text files into one folder per
# package. Then:
#
#   ENGRAM_BENCH_CORPUS_EXTRA=DIR engram bench corpus --n 1000000
#
# Usage: bench/corpus/extra.sh DIR   (wheels are cached in DIR/.wheels; rerunning is cheap)
set -euo pipefail

dir=${1:?usage: bench/corpus/extra.sh DIR}
wheels="$dir/.wheels"
mkdir -p "$wheels"

# Pure text sources: packages with long docstrings and bundled docs. The list is fixed so a
# corpus built from it is the same corpus (given the same package versions).
packages=(
  sympy django scipy pandas numpy matplotlib scikit-learn sqlalchemy twisted networkx
  statsmodels astropy transformers ansible-core mypy pylint sphinx docutils ipython tornado
  celery xarray dask bokeh nltk biopython apache-airflow-core homeassistant kubernetes
  hypothesis pygments sqlglot numba jedi pytest pydantic langchain-core llama-index-core
  openai jax plotly streamlit spacy dagster moto scrapy setuptools pip sphinx-rtd-theme
  flask werkzeug jinja2 requests urllib3 aiohttp fastapi starlette httpx rich click black
  isort flake8 pycodestyle coverage tox virtualenv poetry-core attrs marshmallow boto3
  paramiko cryptography pyopenssl lxml beautifulsoup4 pillow seaborn sqlmodel alembic
  gunicorn uvicorn websockets redis psycopg2-binary pymongo elasticsearch torchvision gensim
  polars pyarrow scikit-image keras optuna prefect distributed zarr h5py pymc arviz
  shapely geopandas altair panel holoviews datasets huggingface-hub accelerate diffusers peft
  sentence-transformers gradio selenium sentry-sdk azure-core
)

python3 -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.11 \
  -d "$wheels" "${packages[@]}"

for whl in "$wheels"/*.whl; do
  name=$(basename "$whl" | cut -d- -f1)
  out="$dir/$name"
  [ -d "$out" ] && continue
  mkdir -p "$out.part"
  unzip -q -o "$whl" '*.py' '*.md' '*.rst' '*.txt' '*.html' -d "$out.part" 2>/dev/null || true
  mv "$out.part" "$out"
done
echo "$(find "$dir" -mindepth 1 -maxdepth 1 -type d ! -name .wheels | wc -l) packages under $dir"
