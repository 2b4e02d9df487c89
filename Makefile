# The README's two commands:
#   make demo   install everything, then the main job (toy Mask R-CNN: train on CPU, COCO mAP)
#   make test   install everything, then the test suite
# Also: make toy-data (generate the toy sets), make clean-toy (remove them and work_dirs/toy), make asan
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

# the three toy sets tools/make_toy_data.py writes (and a half-written one's .tmp folder), and the toy runs
TOY_SETS = data/toy_coco data/toy_ade data/toy_coco_panoptic
clean-toy:
	rm -rf $(TOY_SETS) $(addsuffix .tmp,$(TOY_SETS)) work_dirs/toy
