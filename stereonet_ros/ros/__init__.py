"""stereonet_ros.ros."""
