"""clustvit_ros: ROS 2 side of ClustViT (segmentation node, bag tools) and its messages.

The messages live in `clustvit_ros.msg`, generated from msg/*.msg and installed by the CMake build
(scripts/ros_setup.sh or colcon) into the same package directory as this hand-written code.
The model itself is `clustvit_core`, which needs no ROS.
"""
# Let the source tree's clustvit_ros (when running from the repository root) and the installed
# one (holding the generated clustvit_ros.msg) form one package; without this,
# `import clustvit_ros.msg` fails from the repository root with ModuleNotFoundError.
__path__ = __import__("pkgutil").extend_path(__path__, __name__)
