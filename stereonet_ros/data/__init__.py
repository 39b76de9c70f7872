"""stereonet_ros.data."""
