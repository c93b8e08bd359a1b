"""ament_python build of zoa_ros; also a plain pip-installable package."""

from glob import glob

from setuptools import find_packages, setup

PACKAGE = "zoa_ros"

setup(
    name=PACKAGE,
    version="0.1.0",
    packages=find_packages(exclude=["test", "test.*"]),
    data_files=[
        ("share/ament_index/resource_index/packages", [f"resource/{PACKAGE}"]),
        (f"share/{PACKAGE}", ["package.xml"]),
        (f"share/{PACKAGE}/launch", glob("launch/*.launch.py")),
        (f"share/{PACKAGE}/config", glob("config/*")),
    ],
    package_data={PACKAGE: ["config/*"]},
    include_package_data=True,
    install_requires=["setuptools"],
    # zoa-ros fleet --ray: replays on a Ray cluster (the local process pool needs nothing more)
    extras_require={"fleet": ["ray>=2.9"]},
    zip_safe=False,
    maintainer="zoa_ros maintainers",
    maintainer_email="maintainers@zoa-ros.dev",
    description="Test-time zeroth-order adaptation (ZOA) of quantized classifiers as a ROS 2 node.",
    license="MIT",
    python_requires=">=3.10",
    tests_require=["pytest"],
    entry_points={
        "console_scripts": [
            "zoa-ros = zoa_ros.tools.cli:main",
            "zoa_node = zoa_ros.ros.node:main",
        ],
    },
)
