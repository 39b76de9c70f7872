"""stereonet_ros.evaluation."""
