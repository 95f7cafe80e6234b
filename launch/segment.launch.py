"""Start the ClustViT segmentation node and, with use_rviz:=true, RViz2 showing its outputs.

    ros2 launch clustvit_ros segment.launch.py image:=/camera/image_raw device:=cuda use_rviz:=true
    ros2 launch clustvit_ros segment.launch.py --show-args

The arguments and their mapping to the Node actions live in clustvit_ros/launch_args.py (tested
without ROS); this file only declares them and resolves them when the launch runs.
"""
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, OpaqueFunction
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import Node

from clustvit_ros.launch_args import launch_arguments, launch_plan


def _nodes(context):
    """The Node actions for the argument values resolved in `context`."""
    values = {arg.name: LaunchConfiguration(arg.name).perform(context) for arg in launch_arguments()}
    plan = launch_plan(values)
    nodes = [Node(output="screen", **plan.segment_node.kwargs())]
    if plan.rviz is not None:
        nodes.append(Node(output="screen", **plan.rviz.kwargs()))
    return nodes


def generate_launch_description() -> LaunchDescription:
    """The arguments' declarations, then the nodes (built once the arguments are resolved)."""
    declarations = [
        DeclareLaunchArgument(arg.name, default_value=arg.default, description=arg.description,
                              choices=list(arg.choices) if arg.choices else None)
        for arg in launch_arguments()
    ]
    return LaunchDescription([*declarations, OpaqueFunction(function=_nodes)])
