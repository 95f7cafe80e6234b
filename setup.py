"""pip install of the Python packages (training and evaluation without ROS).

The ROS 2 package (messages, node, launch files) is built with CMake/colcon from package.xml;
this distribution is deliberately named `clustvit` (not `clustvit_ros`) so that a pip install
never replaces the CMake-installed ROS package in the same environment.
"""
from glob import glob

from setuptools import find_packages, setup

setup(
    name="clustvit",
    version="0.1.0",
    description="ClustViT: fast ViT semantic segmentation by clustering background tokens",
    license="Apache-2.0",
    packages=find_packages(include=["clustvit_core", "clustvit_core.*"]),
    python_requires=">=3.10",
    install_requires=[
        "torch>=2.4",
        "torchvision",
        "timm>=1.0.15",
        "safetensors>=0.4",
        "numpy>=1.26,<2.3",
        "opencv-python-headless>=4.9,<5",
        "pyyaml>=6.0",
        "tqdm>=4.66",
        "matplotlib>=3.8,<4",
    ],
    data_files=[("share/clustvit_ros/config/models", sorted(glob("config/models/*.yaml")))],
)
