"""The README's main job: python experiments/quickstart.py --workdir runs/quickstart"""
from absl import app
from absl import flags

from jaxcrystal import demo

FLAGS = flags.FLAGS
flags.DEFINE_string('workdir', 'runs/quickstart', 'Output folder.')


def main(argv):
  del argv
  result = demo.run_structure_demo(FLAGS.workdir)
  print(demo.format_summary(result))
  print(f'outputs in {FLAGS.workdir}')


if __name__ == '__main__':
  app.run(main)
