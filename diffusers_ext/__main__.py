from diffusers_ext.cli import main
main()
