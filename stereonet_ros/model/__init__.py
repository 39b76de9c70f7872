"""stereonet_ros.model."""
