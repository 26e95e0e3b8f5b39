"""What a bundle carries: k3s release assets, images and charts, each produced the same way."""
