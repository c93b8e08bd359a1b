"""Launch zoa_node (nav2 style): parameters = [params_file, overrides].

    ros2 launch zoa_ros zoa.launch.py image_topic:=/camera/image_raw \\
        params_file:=/path/zoa.yaml bank_file:=/data/knowledge.zoabank use_sim_time:=true

Arguments: params_file, namespace, image_topic (remaps the node's ``image``), use_sim_time,
bank_file (overrides ``knowledge.bank_path`` when not empty), log_level, fastdds_profile
(exported as FASTDDS_DEFAULT_PROFILES_FILE; default: the shipped large-image profile).
"""

from pathlib import Path

from launch.actions import DeclareLaunchArgument, OpaqueFunction, SetEnvironmentVariable
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import Node

from launch import LaunchDescription

PACKAGE = "zoa_ros"
ARGUMENTS = {
    "params_file": "zoa_node parameters (YAML, zoa_node: ros__parameters: layout)",
    "namespace": "namespace of the node and its relative topics",
    "image_topic": "camera topic the node's 'image' input is remapped to (transport "
                   "compressed: the node listens on <image_topic>/compressed)",
    "use_sim_time": "use /clock (bag replay)",
    "bank_file": "knowledge bank file (overrides knowledge.bank_path when not empty)",
    "log_level": "debug, info, warn, error or fatal",
    "fastdds_profile": "Fast DDS XML profile exported as FASTDDS_DEFAULT_PROFILES_FILE",
}


def config_dir() -> Path:
    """The package's config/: the installed share dir, else the source tree next to launch/."""
    try:
        from ament_index_python.packages import get_package_share_directory
        share = Path(get_package_share_directory(PACKAGE)) / "config"
        if share.is_dir():
            return share
    except Exception:   # not installed as a ROS package
        pass
    return Path(__file__).resolve().parents[1] / "config"


def _node(context, *args, **kwargs):
    """The node with overrides built from the evaluated arguments."""
    value = {name: LaunchConfiguration(name).perform(context) for name in ARGUMENTS}
    overrides = {"use_sim_time": value["use_sim_time"].strip().lower() in ("true", "1", "yes")}
    if value["bank_file"].strip():
        overrides["knowledge.bank_path"] = value["bank_file"].strip()
    return [Node(
        package=PACKAGE, executable="zoa_node", name="zoa_node",
        namespace=value["namespace"], output="screen", emulate_tty=True,
        parameters=[value["params_file"], overrides],
        remappings=[("image", value["image_topic"])],
        arguments=["--ros-args", "--log-level", value["log_level"]],
    )]


def generate_launch_description() -> LaunchDescription:
    config = config_dir()
    defaults = {
        "params_file": str(config / "zoa.yaml"),
        "namespace": "",
        "image_topic": "image",
        "use_sim_time": "false",
        "bank_file": "",
        "log_level": "info",
        "fastdds_profile": str(config / "fastdds_large_images.xml"),
    }
    return LaunchDescription([
        *(DeclareLaunchArgument(name, default_value=defaults[name], description=text)
          for name, text in ARGUMENTS.items()),
        SetEnvironmentVariable("FASTDDS_DEFAULT_PROFILES_FILE",
                               LaunchConfiguration("fastdds_profile")),
        SetEnvironmentVariable("RCUTILS_LOGGING_BUFFERED_STREAM", "1"),
        OpaqueFunction(function=_node),
    ])
