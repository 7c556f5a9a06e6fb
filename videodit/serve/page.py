PAGE = "<!doctype html><title>videodit</title>"
