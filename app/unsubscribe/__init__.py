"""One-click unsubscribe (RFC 8058) and each recipient's preference centre: the tokens in
mail links, the headers and links put on e-mail at send time, and the changes the public
pages make."""
