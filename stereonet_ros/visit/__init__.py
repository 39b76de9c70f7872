"""One prepared accelerator visit (``scripts/gpu_run``): prove the CUDA path, measure it, train, evaluate.

GPU time here is rare and short (a lent machine, minutes per task), so everything a visit should do is
one command, rehearsed on the CPU by the test suite (``--rehearse``, tiny sizes) so that it runs on the
day. :mod:`stereonet_ros.visit.run` plans and runs the steps, each in a process of its own with its own
time limit; :mod:`stereonet_ros.visit.steps` are the steps; :mod:`stereonet_ros.visit.checks` the CUDA
correctness checks, shared with ``test/test_cuda.py``.

The machine has torch (CUDA), numpy, opencv-python-headless, scikit-image, safetensors, pyyaml and tqdm,
no rclpy and no package registry, and gets the repository as a plain copy: nothing here imports ROS or
rosbags, and a step whose dependency is missing reports ``skipped`` with the reason while the others go on.
"""
