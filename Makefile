# Two commands do all set-up on a fresh machine (Debian, root; see README):
#   make demo   train the tiny experiment on CPU (python -m cispo.train +exp=tiny)
#   make test   run the test suite
# Each step is idempotent: a re-run only redoes what is missing.
PY      ?= python3.11
VENV    := .venv
VPY     := $(VENV)/bin/python
STAMP   := .stamps
# The pinned set the project is tested with (torch 2.13.0: a CPU build on the dev/CI machines).
# triton 3.6.0: the GPU machine's version, so CI's interpreter and sm_90 compile checks of the
# kernels match what runs there (a CPU torch does not bring one; only Linux x86_64 has wheels).
PINS    := torch==2.13.0 deepspeed==0.19.8 ray[default]==2.60.0 transformers==5.23.0 \
           "triton==3.6.0; platform_system == 'Linux' and platform_machine == 'x86_64'"

.PHONY: demo test test-all venv docker image lint bench clean

demo: venv docker image
	$(VPY) -m cispo.train +exp=tiny $(ARGS)

test: venv docker image
	$(VPY) -m pytest -q $(ARGS)

venv: $(STAMP)/venv
$(STAMP)/venv: pyproject.toml
	@command -v $(PY) >/dev/null || { echo "need $(PY) (Python >= 3.11) on PATH, or: make PY=python3.12 ..."; exit 1; }
	test -x $(VPY) || $(PY) -m venv $(VENV)
	$(VPY) -m pip install -q --upgrade pip
	$(VPY) -m pip install -q $(PINS) -e '.[test]'
	@mkdir -p $(STAMP) && touch $@

docker:
	bash launch/local/setup_docker.sh

image: venv docker
	$(VPY) -m sandboxes.image build

lint: venv
	$(VPY) -m ruff check .

bench: venv docker image
	$(VPY) bench/math_reward.py

clean:
	rm -rf $(STAMP) runs outputs
