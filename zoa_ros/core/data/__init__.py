"""Frames in: labelled image folders (``labelled_images``), ImageNet-C corruptions
(``corruptions``), continual streams and their domain schedules (``stream``,
``domain_schedule``), sensor_msgs payloads to RGB (``image_messages``) and rosbag2
recordings (``bags``). Imports ``files``, ``runtime`` and ``model``."""
