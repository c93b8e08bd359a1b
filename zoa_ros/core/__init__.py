"""Pure PyTorch/numpy core of zoa_ros. Nothing under this package imports rclpy."""
