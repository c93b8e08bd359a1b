"""Frames in: labelled image folders (``labelled_images``), ImageNet-C corruptions
(``corruptions``), continual streams, their domain schedules and frame orders (``stream``,
``domain_schedule``, ``stream_order``), sensor_msgs payloads to RGB (``image_messages``) and
rosbag2 recordings (``bags``). Imports ``files``, ``runtime`` and ``model``."""
