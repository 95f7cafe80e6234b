"""clustvit_ros: ROS 2 side of ClustViT (segmentation node, launch helper, bag tools).

Its message types are in the separate ROS package clustvit_msgs (`clustvit_msgs.msg`); the model
itself is `clustvit_core`, which needs no ROS. This folder is also the ROS package clustvit_ros
(package.xml, CMakeLists.txt).
"""
