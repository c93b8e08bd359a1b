# make demo : install into .venv (once), then run the main job on the embedded default.
# make test : install into .venv (once), then run the test suite.
PY      ?= python3
VENV    := .venv
VPY     := $(VENV)/bin/python
STAMP   := $(VENV)/.installed
OUT     := out

.PHONY: install demo test lint clean

install: $(STAMP)

# Re-runs only when a dependency list or the package metadata changes.
$(STAMP): requirements.txt requirements-dev.txt setup.py
	@test -x $(VPY) || $(PY) -m venv $(VENV)
	$(VPY) -m pip install -q --disable-pip-version-check -r requirements-dev.txt 2>&1 | grep -v "is ignored: it is neither" || true
	@$(VPY) -c "import torch, timm, rclpy, cv_bridge" || (echo "dependency install failed" >&2; exit 1)
	# imagecorruptions declares opencv-python (clashes with the headless build): install it alone.
	$(VPY) -m pip install -q --disable-pip-version-check --no-deps imagecorruptions==1.1.2 2>&1 | grep -v "is ignored: it is neither" || true
	$(VPY) -m pip install -q --disable-pip-version-check --no-deps --no-build-isolation -e . 2>&1 | grep -v "is ignored: it is neither" || true
	@$(VPY) -c "import zoa_ros.core.data.corruptions" || (echo "package install failed" >&2; exit 1)
	@touch $@

demo: $(STAMP)
	$(VENV)/bin/zoa-ros demo --out $(OUT)/demo

test: $(STAMP)
	$(VPY) -m pytest -q test

lint: $(STAMP)
	$(VENV)/bin/ruff check zoa_ros test launch setup.py

clean:
	rm -rf $(VENV) $(OUT) build install log *.egg-info
