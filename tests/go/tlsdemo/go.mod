module andon.test/tlsdemo

go 1.19
