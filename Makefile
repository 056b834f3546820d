# foldstack: one target per stage. `make all PIPELINE=<name>` reads pipelines/<name>.yaml:
# download -> folds -> train -> predict -> stack -> submit.
# Make's own dependency tracking skips stages whose inputs have not changed; inside `train`,
# every finished (model, fold) is skipped too, so an interrupted run resumes where it stopped.

PIPELINE ?= digits
PYTHON   ?= python3
# Inside a Kaggle kernel outputs go under /kaggle/working (FOLDSTACK_KAGGLE_WORKING moves it, as
# for foldstack itself) and the kernel's own Python is used; caches go to scratch (core/paths.py).
ROOT     ?= $(if $(KAGGLE_KERNEL_RUN_TYPE),$(or $(FOLDSTACK_KAGGLE_WORKING),/kaggle/working),.)
VENV     ?= .venv

CFG   ?= pipelines/$(PIPELINE).yaml
ART   := $(ROOT)/artifacts/$(PIPELINE)
# The competition's files: a new test set (its top-level tables, e.g. the sample submission) makes
# `predict` run again; the stage itself skips every model whose test predictions are current.
DATA  ?= $(ROOT)/data/$(PIPELINE)
MARK  := $(ART)/.make

ifdef KAGGLE_KERNEL_RUN_TYPE
BIN   := $(dir $(shell command -v $(PYTHON)))
SETUP := $(ROOT)/.foldstack-installed
TEST_SETUP := $(SETUP)
else
BIN   := $(VENV)/bin/
SETUP := $(VENV)/.installed
TEST_SETUP := $(VENV)/.installed-test $(VENV)/.chromium $(VENV)/.kaggle-image
endif
FOLDSTACK := $(BIN)foldstack
RUN = $(FOLDSTACK) $(1) --pipeline $(CFG) --root $(ROOT)

.PHONY: all init download folds train predict stack submit report check test bench clean setup bundle kernel kernel-push
.DELETE_ON_ERROR:

all: report

setup: $(SETUP)

# First use creates the virtual environment; a new requirements.txt reinstalls it.
$(VENV)/.installed: requirements.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --disable-pip-version-check -r requirements.txt
	$(VENV)/bin/pip install --quiet --disable-pip-version-check --no-deps -e .
	touch $@

# make test's set-up: the test pins, Debian's Chromium (the report's browser test drives
# /usr/bin/chromium; we run as root) and the Kaggle image's published versions (tests/kaggle-image.txt),
# built once into a cached environment outside the repository, ~/.cache/foldstack/kaggle-image-<key>
# (two minutes; reused after). The three are independent: `make test` runs them side by side (-j3),
# so a fresh machine waits for the longest one alone.
$(VENV)/.installed-test: requirements-test.txt $(VENV)/.installed
	$(VENV)/bin/pip install --quiet --disable-pip-version-check -r requirements-test.txt
	touch $@

$(VENV)/.chromium:
	test -x /usr/bin/chromium || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; }
	@mkdir -p $(@D) && touch $@

$(VENV)/.kaggle-image: tests/kaggle-image.txt tests/kaggle_image.py
	$(PYTHON) tests/kaggle_image.py
	@mkdir -p $(@D) && touch $@

# A Kaggle kernel already has TensorFlow, Keras and most pins: install only the pins the image lacks
# or holds at another version (from an attached wheels/ folder, `WHEELS=DIR` names one; else the
# index), one line each, then foldstack itself (runtime/kernel_setup.py).
$(ROOT)/.foldstack-installed: pyproject.toml requirements.txt
	PYTHONPATH=src $(PYTHON) -m foldstack.runtime.kernel_setup $(if $(WHEELS),--wheels $(WHEELS))
	@mkdir -p $(@D) && touch $@

download: $(MARK)/download
folds: $(ART)/folds.csv
train: $(MARK)/train
predict: $(MARK)/predict
stack: $(MARK)/stack
submit: $(MARK)/submit
report: $(ART)/report.html

$(MARK)/download: $(CFG) | $(SETUP)
	$(call RUN,download)
	@mkdir -p $(@D) && touch $@

$(ART)/folds.csv: $(MARK)/download $(CFG)
	$(call RUN,folds)

$(MARK)/train: $(ART)/folds.csv $(CFG)
	$(call RUN,train)
	@touch $@

# Never trains: the trained folds predict whatever test set is there.
$(MARK)/predict: $(MARK)/train $(CFG) $(wildcard $(DATA)/*.csv)
	$(call RUN,predict)
	@touch $@

# Cross-validates only when the OOF files changed; otherwise applies the saved level-two model.
$(MARK)/stack: $(MARK)/predict $(CFG)
	$(call RUN,stack)
	@touch $@

$(MARK)/submit: $(MARK)/stack
	$(call RUN,submit)
	@touch $@

$(ART)/report.html: $(MARK)/submit
	$(call RUN,report)

# One folder to upload as a Kaggle dataset (bundle/<pipeline>/) and the inference kernel
# (kernel/<pipeline>/). `make bundle UPLOAD="notes"` also creates or versions the dataset.
bundle: stack | $(SETUP)
	$(call RUN,bundle) $(if $(UPLOAD),--upload -m "$(UPLOAD)")

# Push kernel/<pipeline>/ (Kaggle runs it on the bundle's newest version); `make kernel-push
# SUBMIT="message"` also waits for the run, submits its output and records the public score.
kernel-push: | $(SETUP)
	$(call RUN,kernel-push) $(if $(SUBMIT),--submit -m "$(SUBMIT)")

# What the inference kernel runs once foldstack is installed: `make kernel BUNDLE=<folder>`.
kernel: | $(SETUP)
	$(FOLDSTACK) kernel --bundle $(or $(BUNDLE),$(error name the bundle: make kernel BUNDLE=<folder>)) --root $(ROOT)

# Write pipelines/<name>.yaml from a competition's own files, then check it: `make init PIPELINE=<name>
# DATA=<folder>` (the files as shipped) or `COMPETITION=<slug>` (downloaded by the Kaggle client);
# FORCE=1 overwrites an existing pipeline. DATA counts only when given on the command line.
init: | $(SETUP)
	$(FOLDSTACK) init --pipeline $(PIPELINE) --root $(ROOT) $(if $(filter command line,$(origin DATA)),--data $(DATA)) $(if $(COMPETITION),--competition $(COMPETITION)) $(if $(FORCE),--force)

check: | $(SETUP)
	$(call RUN,check)

# Three workers on two cores: the suite waits on subprocesses, sleeps and disk often enough that a
# third keeps both cores busy (`pytest -n 3`: 1,115 s; `-n 2`: 1,290-1,311 s; an idle 2-core machine).
# Each TensorFlow process of the suite runs one thread per pool, oneDNN off (tests/conftest.py): 705 s.
test:
	@$(MAKE) --no-print-directory -j3 --output-sync=target $(TEST_SETUP)
	$(BIN)python -m pytest -q -n 3 --dist loadscope --no-loadscope-reorder --durations=15

bench: | $(SETUP)
	$(BIN)python -m benchmarks

clean:
	rm -rf $(ART) $(ROOT)/data/$(PIPELINE) $(ROOT)/submissions/$(PIPELINE) $(ROOT)/bundle/$(PIPELINE) $(ROOT)/kernel/$(PIPELINE)
