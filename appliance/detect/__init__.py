"""Host detection: raw probes (NVML, psutil, /proc, sysfs) and pure parsers into ``appliance.detect.facts``."""
