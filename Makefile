# The README's two commands:
#   make demo   install everything, then the main job (toy Mask R-CNN: train on CPU, COCO mAP)
#   make test   install everything, then the test suite
PYTHON ?= python3
PYTEST_ARGS ?= -q

.PHONY: install demo test asan toy-data clean-toy

install:
	PYTHON=$(PYTHON) bash tools/install.sh

demo: install
	$(PYTHON) tools/run_toy.py

test: install
	$(PYTHON) -m pytest $(PYTEST_ARGS) tests

# the compiled kernel built with AddressSanitizer, running the kernel sweep and the op tests
asan: install
	PYTHON=$(PYTHON) bash tools/asan_check.sh

toy-data:
	$(PYTHON) tools/make_toy_data.py

clean-toy:
	rm -rf data/toy_coco data/toy_ade work_dirs/toy
