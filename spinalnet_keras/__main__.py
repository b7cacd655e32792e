from spinalnet_keras.cli import run

run()
