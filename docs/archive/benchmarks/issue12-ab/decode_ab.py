import sys, time, io, pathlib, statistics
tree = sys.argv[1]
sys.path.insert(0, tree)
import models.data.images as im
assert im.__file__.startswith(tree), im.__file__
from PIL import Image
srcs = sorted(pathlib.Path('/work/shared/data/ph2').rglob('*'))
srcs = [p for p in srcs if p.suffix.lower() in ('.bmp', '.png', '.jpg') and 'lesion' not in p.name.lower()][:32]
pngs = []
for p in srcs:
    buf = io.BytesIO(); Image.open(p).convert('RGB').resize((256, 256)).save(buf, 'PNG'); pngs.append(buf.getvalue())
times = []
for r in range(5):
    t = time.perf_counter()
    for b in pngs: im.decode_image(b)
    times.append((time.perf_counter() - t) / len(pngs) * 1000)
print(tree, f"{statistics.median(times):.3f} ms/image", len(pngs))
