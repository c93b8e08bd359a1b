"""rosbag2 recordings through the pure-Python ``rosbags`` library (no rclpy): opening and
reading raw CDR messages (``files``), label topics and CSVs (``labels``), a frame stream over
a recording (``stream``) and the atomic make-bag writer (``writer``)."""
