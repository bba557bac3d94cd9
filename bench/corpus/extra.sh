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

# Pure text sources: packages with long docstrings and bundled docs, pinned, so that a
# corpus built from them is the same corpus wherever the machine's own text is the same
# (the versions of the million-sentence runs in docs/benchmarks.md since 2026-12-07).
packages=(
  accelerate==1.16.0 aiohttp==3.14.5 alembic==1.20.1 altair==6.3.0 ansible-core==2.19.14
  apache-airflow-core==3.3.2 arviz==0.23.4 astropy==8.0.2 attrs==26.1.0 azure-core==1.41.0
  beautifulsoup4==4.15.0 biopython==1.88 black==26.10.1 bokeh==3.9.2 boto3==1.44.18
  celery==5.7.0 click==8.5.1 coverage==7.18.0 cryptography==51.0.1 dagster==1.13.29
  dask==2026.11.0 datasets==5.2.0 diffusers==0.42.1 distributed==2026.8.0 django==5.2.20
  docutils==0.23.1 elasticsearch==9.5.1 fastapi==0.165.0 flake8==7.5.0 flask==3.1.3
  gensim==4.4.0 geopandas==1.2.0 gradio==6.31.0 gunicorn==27.0.1 h5py==3.16.0
  holoviews==1.23.2 homeassistant==2024.3.3 httpx==0.29.0 huggingface-hub==2.4.0
  hypothesis==6.170.27 ipython==9.19.1 isort==9.0.2 jax==0.10.2 jedi==0.20.1 jinja2==3.1.6
  keras==3.15.1 kubernetes==37.0.3 langchain-core==1.8.4 llama-index-core==0.14.25
  lxml==6.2.1 marshmallow==4.4.0 matplotlib==3.11.2 moto==5.2.6 mypy==2.4.1
  networkx==3.6.1 nltk==3.10.4 numba==0.68.1 numpy==2.4.6 openai==3.63.0 optuna==5.1.0
  pandas==3.1.1 panel==1.9.4 paramiko==5.1.0 peft==0.21.2 pillow==13.0.0 pip==26.3
  plotly==7.1.0 poetry-core==2.5.0 polars==2.1.0 prefect==3.9.1 psycopg2-binary==2.9.13
  pyarrow==26.0.1 pycodestyle==2.15.0 pydantic==2.14.4 pygments==2.21.0 pylint==4.1.5
  pymc==5.28.5 pymongo==4.20.1 pyopenssl==26.4.0 pytest==9.2.0 redis==8.2.0
  requests==2.34.2 rich==15.0.0 scikit-image==0.26.0 scikit-learn==1.9.1 scipy==1.17.1
  scrapy==2.19.0 seaborn==0.13.2 selenium==4.53.0 sentence-transformers==6.3.0
  sentry-sdk==3.0.0 setuptools==84.2.1 shapely==2.2.0 spacy==3.8.18 sphinx==9.0.4
  sphinx-rtd-theme==3.1.0 sqlalchemy==2.1.9 sqlglot==30.31.0 sqlmodel==0.0.50
  starlette==1.10.0 statsmodels==0.15.0 streamlit==1.67.0 sympy==1.14.0
  torchvision==0.29.2 tornado==6.6.1 tox==4.67.17 transformers==5.25.0 twisted==26.10.0
  urllib3==2.8.0 uvicorn==0.55.0 virtualenv==21.15.14 websockets==17.4 werkzeug==3.1.9
  xarray==2026.9.0 zarr==3.1.6
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
